/**
 * The first schema. Migrations take `Kysely<unknown>`: they describe the
 * database as it was when they were written, not as the code types it today.
 * Never edit a migration that has shipped; add a new one.
 */
import { type Kysely, sql } from "kysely";

export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("kernels")
    .addColumn("name", "text", (col) => col.primaryKey())
    .addColumn("version", "text", (col) => col.notNull())
    .addColumn("kernel_sha256", "text", (col) => col.notNull())
    .addColumn("kernel_bytes", "integer", (col) => col.notNull())
    .addColumn("uncompressed", "integer", (col) => col.notNull().check(sql`uncompressed in (0, 1)`))
    .addColumn("initrd_bytes", "integer", (col) => col.notNull().defaultTo(0))
    .addColumn("has_modules", "integer", (col) => col.notNull().check(sql`has_modules in (0, 1)`))
    .addColumn("is_default", "integer", (col) =>
      col
        .notNull()
        .defaultTo(0)
        .check(sql`is_default in (0, 1)`),
    )
    .addColumn("created_at", "text", (col) => col.notNull())
    .execute();
  // At most one default kernel.
  await db.schema
    .createIndex("kernels_single_default")
    .on("kernels")
    .column("is_default")
    .unique()
    .where(sql.ref("is_default"), "=", 1)
    .execute();

  await db.schema
    .createTable("images")
    .addColumn("name", "text", (col) => col.primaryKey())
    .addColumn("reference", "text")
    .addColumn("manifest_digest", "text")
    .addColumn("platform", "text", (col) => col.notNull())
    .addColumn("rootfs_bytes", "integer", (col) => col.notNull())
    .addColumn("work_seed_bytes", "integer", (col) => col.notNull().defaultTo(0))
    .addColumn("default_kernel", "text", (col) => col.references("kernels.name").onDelete("restrict"))
    .addColumn("source", "text", (col) => col.notNull())
    .addColumn("config", "text", (col) => col.notNull())
    .addColumn("created_at", "text", (col) => col.notNull())
    .execute();

  await db.schema
    .createTable("vms")
    .addColumn("id", "text", (col) => col.primaryKey())
    .addColumn("name", "text", (col) => col.notNull().unique())
    .addColumn("image_name", "text", (col) => col.notNull().references("images.name").onDelete("restrict"))
    .addColumn("kernel_name", "text", (col) => col.notNull().references("kernels.name").onDelete("restrict"))
    .addColumn("vcpu", "integer", (col) => col.notNull())
    .addColumn("memory_mib", "integer", (col) => col.notNull())
    .addColumn("work_disk_mib", "integer", (col) => col.notNull())
    .addColumn("guest_ip", "text", (col) => col.notNull().unique())
    .addColumn("mac", "text", (col) =>
      col
        .notNull()
        .unique()
        .modifyEnd(sql`collate nocase`),
    )
    .addColumn("vsock_cid", "integer", (col) => col.notNull().unique())
    .addColumn("nat", "integer", (col) => col.notNull().check(sql`nat in (0, 1)`))
    .addColumn("vmm", "text", (col) => col.notNull())
    .addColumn("root_disk_strategy", "text", (col) => col.notNull())
    .addColumn("desired_state", "text", (col) => col.notNull())
    .addColumn("last_error", "text")
    .addColumn("pending_changes", "text", (col) => col.notNull().defaultTo("{}"))
    .addColumn("created_at", "text", (col) => col.notNull())
    .addColumn("updated_at", "text", (col) => col.notNull())
    .execute();

  await db.schema
    .createTable("operations")
    .addColumn("id", "text", (col) => col.primaryKey())
    .addColumn("kind", "text", (col) => col.notNull())
    .addColumn("state", "text", (col) => col.notNull())
    .addColumn("target", "text", (col) => col.notNull())
    .addColumn("stages", "text", (col) => col.notNull().defaultTo("[]"))
    .addColumn("result", "text")
    .addColumn("error", "text")
    .addColumn("created_at", "text", (col) => col.notNull())
    .addColumn("updated_at", "text", (col) => col.notNull())
    .addColumn("ended_at", "text")
    .execute();
}
