/**
 * - `snapshots`: snapshots of running VMs (`banger vm snapshot`), their files in
 *   `<state>/snapshots/<name>/`. The image and kernel they need are references (ON DELETE
 *   RESTRICT), so neither can be deleted while a snapshot needs it. The source VM is a name
 *   only: deleting the VM keeps its snapshots.
 */
import type { Kysely } from "kysely";

export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("snapshots")
    .addColumn("name", "text", (col) => col.primaryKey())
    .addColumn("vm_name", "text", (col) => col.notNull())
    .addColumn("vm_id", "text", (col) => col.notNull())
    .addColumn("image_name", "text", (col) => col.notNull().references("images.name").onDelete("restrict"))
    .addColumn("kernel_name", "text", (col) => col.notNull().references("kernels.name").onDelete("restrict"))
    .addColumn("vmm", "text", (col) => col.notNull())
    .addColumn("vcpu", "integer", (col) => col.notNull())
    .addColumn("memory_mib", "integer", (col) => col.notNull())
    .addColumn("work_disk_mib", "integer", (col) => col.notNull())
    .addColumn("root_disk_strategy", "text", (col) => col.notNull())
    .addColumn("mac", "text", (col) => col.notNull())
    .addColumn("created_at", "text", (col) => col.notNull())
    .execute();
  await db.schema.createIndex("snapshots_image_name").on("snapshots").column("image_name").execute();
  await db.schema.createIndex("snapshots_kernel_name").on("snapshots").column("kernel_name").execute();
}
