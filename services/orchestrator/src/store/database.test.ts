import { createHash } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { FailedPreconditionError, InternalError } from "@banger/common";
import Sqlite from "better-sqlite3";
import { type Kysely, sql } from "kysely";
import { describe, expect, it } from "vitest";
import { openDatabase, openStore } from "./database.js";
import { getImage, listImages } from "./image-repository.js";
import { getKernel } from "./kernel-repository.js";
import { appliedMigrations, MIGRATION_TABLE, MIGRATIONS, migrateToLatest } from "./migrations.js";
import { getOperation } from "./operation-repository.js";
import { T0, at, rejectionOf, useTempDir } from "../../test-support/store.js";
import { getVmByName, listVms, updateVm } from "./vm-repository.js";

const ALL = Object.keys(MIGRATIONS);

async function digest(path: string): Promise<string> {
  return createHash("sha256")
    .update(await readFile(path))
    .digest("hex");
}

describe("openStore", () => {
  const dir = useTempDir();

  it("creates the schema in an empty file, and reopening applies nothing", async () => {
    const path = join(dir(), "state.db");
    const store = await openStore(path);
    expect(await appliedMigrations(store.db)).toEqual(ALL);
    const tables = await store.db.introspection.getTables();
    expect(tables.map((table) => table.name).sort()).toEqual(["images", "kernels", "operations", "snapshots", "vms"]);
    await store.close();

    const db = openDatabase(path);
    try {
      expect(await migrateToLatest(db, path)).toEqual([]);
    } finally {
      await db.destroy();
    }
  });

  it("has more than one migration, named by date, in order", () => {
    expect(ALL.length).toBeGreaterThanOrEqual(2);
    for (const name of ALL) expect(name).toMatch(/^\d{4}_\d{2}_\d{2}_\d{4}_[a-z0-9_]+$/);
    expect([...ALL].sort()).toEqual(ALL);
  });

  it("runs SQLite in WAL mode with foreign keys, a busy timeout and synchronous=NORMAL", async () => {
    const path = join(dir(), "state.db");
    const store = await openStore(path);
    try {
      const pragma = async (name: string) => {
        const { rows } = await sql<Record<string, unknown>>`pragma ${sql.raw(name)}`.execute(store.db);
        return Object.values(rows[0] ?? {})[0];
      };
      expect(await pragma("journal_mode")).toBe("wal");
      expect(await pragma("foreign_keys")).toBe(1);
      expect(await pragma("busy_timeout")).toBe(5000);
      expect(await pragma("synchronous")).toBe(1); // NORMAL
    } finally {
      await store.close();
    }
    // WAL is a property of the file: another connection sees it too.
    const other = new Sqlite(path, { readonly: true });
    expect(other.pragma("journal_mode", { simple: true })).toBe("wal");
    other.close();
  });

  it("upgrades a database of the previous schema in place, keeping its rows", async () => {
    const path = join(dir(), "state.db");
    const [first] = Object.entries(MIGRATIONS);
    if (first === undefined) throw new Error("no migrations");
    const old = openDatabase(path);
    expect(await migrateToLatest(old, path, Object.fromEntries([first]))).toEqual([first[0]]);
    // Rows as the first schema knew them (no vms.started_at yet).
    const created = T0.toISOString();
    await old
      .insertInto("kernels")
      .values({
        name: "k",
        version: "6.1",
        kernel_sha256: "sha256:00",
        kernel_bytes: 1,
        uncompressed: 1,
        initrd_bytes: 0,
        has_modules: 0,
        is_default: 1,
        created_at: created,
      })
      .execute();
    await old
      .insertInto("images")
      .values({
        name: "debian",
        reference: "debian:bookworm",
        manifest_digest: "sha256:11",
        platform: "linux/amd64",
        rootfs_bytes: 10,
        work_seed_bytes: 0,
        default_kernel: "k",
        source: "pulled",
        config: JSON.stringify({ entrypoint: [], cmd: ["bash"], env: [], user: "", workingDir: "" }),
        created_at: created,
      })
      .execute();
    await sql`insert into vms (id, name, image_name, kernel_name, vcpu, memory_mib, work_disk_mib, guest_ip, mac,
        vsock_cid, nat, vmm, root_disk_strategy, desired_state, last_error, pending_changes, created_at, updated_at)
      values ('vm-1', 'box', 'debian', 'k', 2, 512, 1024, '172.30.0.2', '06:00:00:00:00:02', 3, 1, 'firecracker',
        'clone', 'stopped', null, '{"vcpu":4}', ${created}, ${created})`.execute(old);
    await old
      .insertInto("operations")
      .values({
        id: "op-0123456789ab",
        kind: "create-vm",
        state: "succeeded",
        target: "box",
        stages: "[]",
        result: '{"vm":"box"}',
        error: null,
        created_at: created,
        updated_at: created,
        ended_at: created,
      })
      .execute();
    const columnsBefore = await old.introspection.getTables();
    expect(columnsBefore.find((t) => t.name === "vms")?.columns.map((c) => c.name)).not.toContain("started_at");
    await old.destroy();

    const store = await openStore(path);
    try {
      expect(await appliedMigrations(store.db)).toEqual(ALL);
      const box = await getVmByName(store.db, "box");
      expect(box).toMatchObject({
        id: "vm-1",
        imageName: "debian",
        kernelName: "k",
        nat: true,
        rootDiskStrategy: "clone",
        pendingChanges: { vcpu: 4 },
        startedAt: null,
      });
      expect(await getImage(store.db, "debian")).toMatchObject({ defaultKernel: "k", config: { cmd: ["bash"] } });
      expect(await getKernel(store.db, "k")).toMatchObject({ isDefault: true });
      // Not a result today's code ever wrote: the operation stays readable, its result marked unreadable.
      expect(await getOperation(store.db, "op-0123456789ab")).toMatchObject({
        state: "succeeded",
        result: { kind: "unreadable" },
      });
      // The new column works.
      const started = await updateVm(store.db, "box", { updatedAt: at(5), startedAt: at(5) });
      expect(started.startedAt).toEqual(at(5));
      // And the new indexes exist.
      const { rows } = await sql<{ name: string }>`select name from sqlite_master where type = 'index'`.execute(
        store.db,
      );
      expect(rows.map((row) => row.name)).toEqual(
        expect.arrayContaining(["vms_image_name", "vms_kernel_name", "images_default_kernel", "operations_target"]),
      );
    } finally {
      await store.close();
    }
  });

  it("refuses a database written by a newer banger, naming the file and the migration, and leaves it alone", async () => {
    const path = join(dir(), "state.db");
    await (await openStore(path)).close();
    const raw = new Sqlite(path);
    raw
      .prepare(`insert into ${MIGRATION_TABLE} (name, timestamp) values (?, ?)`)
      .run("2099_01_01_0001_from_the_future", new Date().toISOString());
    raw.close();
    const before = await digest(path);

    const error = await rejectionOf(openStore(path), FailedPreconditionError);
    expect(error.reason).toBe("DATABASE_TOO_NEW");
    expect(error.message).toContain(path);
    expect(error.message).toContain("2099_01_01_0001_from_the_future");
    expect(await digest(path)).toBe(before);
  });

  it("applies pending migrations all or nothing: a failing one leaves the file at the old schema", async () => {
    const path = join(dir(), "state.db");
    const broken = {
      ...MIGRATIONS,
      "2099_01_01_0001_half_done": {
        up: async (db: Kysely<unknown>) => {
          await db.schema.createTable("half").addColumn("x", "integer").execute();
          await sql`this is not sql`.execute(db);
        },
      },
    };
    const db = openDatabase(path);
    try {
      const error = await rejectionOf(migrateToLatest(db, path, broken), InternalError);
      expect(error.reason).toBe("DATABASE_MIGRATION_FAILED");
      expect(error.message).toContain("2099_01_01_0001_half_done");
      // Nothing of the run stayed: not even the migrations before the failing one.
      expect(await appliedMigrations(db)).toEqual([]);
      const tables = await db.introspection.getTables();
      expect(tables.map((table) => table.name)).toEqual([]);
    } finally {
      await db.destroy();
    }
    const store = await openStore(path);
    expect(await listVms(store.db)).toEqual([]);
    expect(await listImages(store.db)).toEqual([]);
    await store.close();
  });

  it("reports a file that is not a database as DATABASE_UNREADABLE", async () => {
    const path = join(dir(), "state.db");
    await writeFile(path, "this is not a database, it is a text file padded out to look big enough\n".repeat(100));
    const error = await rejectionOf(openStore(path), FailedPreconditionError);
    expect(error.reason).toBe("DATABASE_UNREADABLE");
    expect(error.message).toContain(path);
  });
});
