import type { Insertable, Kysely, Selectable } from "kysely";
import { fromTimestamp, oneOf, toTimestamp } from "./columns.js";
import { guardWrite } from "./errors.js";
import type { Database } from "./schema.js";
import type { SnapshotTable } from "./snapshot.table.js";

export { listSnapshotsUsing } from "./references.js";
import { ROOT_DISK_STRATEGIES, VMM_KINDS, type RootDiskStrategy, type VmmKind } from "./vm-repository.js";

/** A snapshot of a running VM, as stored (its files' size is measured, not stored). */
export interface SnapshotRecord {
  readonly name: string;
  readonly vmName: string;
  readonly vmId: string;
  readonly imageName: string;
  readonly kernelName: string;
  readonly vmm: VmmKind;
  readonly vcpu: number;
  readonly memoryMib: number;
  readonly workDiskMib: number;
  readonly rootDiskStrategy: RootDiskStrategy;
  readonly mac: string;
  readonly createdAt: Date;
}

/** Errors: AlreadyExistsError SNAPSHOT_NAME_TAKEN, NotFoundError IMAGE_NOT_FOUND / KERNEL_NOT_FOUND. */
export async function insertSnapshot(db: Kysely<Database>, snapshot: SnapshotRecord): Promise<void> {
  const row: Insertable<SnapshotTable> = {
    name: snapshot.name,
    vm_name: snapshot.vmName,
    vm_id: snapshot.vmId,
    image_name: snapshot.imageName,
    kernel_name: snapshot.kernelName,
    vmm: snapshot.vmm,
    vcpu: snapshot.vcpu,
    memory_mib: snapshot.memoryMib,
    work_disk_mib: snapshot.workDiskMib,
    root_disk_strategy: snapshot.rootDiskStrategy,
    mac: snapshot.mac,
    created_at: toTimestamp(snapshot.createdAt),
  };
  await guardWrite(db, { action: "insert", table: "snapshots", values: row }, () =>
    db.insertInto("snapshots").values(row).execute(),
  );
}

export async function getSnapshot(db: Kysely<Database>, name: string): Promise<SnapshotRecord | undefined> {
  const row = await db.selectFrom("snapshots").selectAll().where("name", "=", name).executeTakeFirst();
  return row && fromRow(row);
}

/** All snapshots, sorted by name. */
export async function listSnapshots(db: Kysely<Database>): Promise<SnapshotRecord[]> {
  const rows = await db.selectFrom("snapshots").selectAll().orderBy("name").execute();
  return rows.map(fromRow);
}

/** Whether a row was deleted. */
export async function deleteSnapshot(db: Kysely<Database>, name: string): Promise<boolean> {
  const result = await db.deleteFrom("snapshots").where("name", "=", name).executeTakeFirst();
  return result.numDeletedRows > 0n;
}

function fromRow(row: Selectable<SnapshotTable>): SnapshotRecord {
  const where = `snapshot ${row.name}`;
  return {
    name: row.name,
    vmName: row.vm_name,
    vmId: row.vm_id,
    imageName: row.image_name,
    kernelName: row.kernel_name,
    vmm: oneOf(VMM_KINDS, row.vmm, `${where} vmm`),
    vcpu: row.vcpu,
    memoryMib: row.memory_mib,
    workDiskMib: row.work_disk_mib,
    rootDiskStrategy: oneOf(ROOT_DISK_STRATEGIES, row.root_disk_strategy, `${where} root_disk_strategy`),
    mac: row.mac,
    createdAt: fromTimestamp(row.created_at, `${where} created_at`),
  };
}
