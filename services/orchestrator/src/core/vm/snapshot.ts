/**
 * Snapshots of running VMs (`banger vm snapshot NAME --as SNAP`): the guest's
 * memory and device state and its disks at one instant, in
 * `<state>/snapshots/<snap>/`, with a row in `snapshots` that holds its image
 * and kernel (neither can be deleted while it exists). Stages: freeze (the
 * guest's file systems, through the agent, while the guest still runs) →
 * pause → copy-disks (reflinked or sparse, while paused) → save-state (the VMM
 * writes its files) → record (snapshot.json, the row) → resume → thaw. A
 * failure removes the row and the files and lets the guest run on, thawed;
 * the source VM keeps running either way. Forks from a snapshot are not built
 * yet (#20 point 3).
 */
import { mkdir, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  copySparse,
} from "@banger/common";
import {
  deleteSnapshot,
  getSnapshot,
  insertSnapshot,
  listSnapshots,
  type OperationRecord,
  type SnapshotRecord,
  type SnapshotView,
  type VmRecord,
} from "../../store/index.js";
import type { OperationContext } from "../operations.js";
import { agentOf, setGuestClock } from "./agent.js";
import type { VmContext } from "./context.js";
import type { Handles } from "./model.js";
import { resumeHandles } from "./pause.js";

const SNAPSHOT_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** How long the agent may take to freeze or thaw the guest's file systems. */
const FSFREEZE_MS = 10_000;

/** The file in a snapshot's directory that says what it is; written last of its files. */
const RECORD = "snapshot.json";

/** The snapshot's copy of the work disk, and of the root disk (a clone's file, or a dm-snapshot VM's COW). */
export const SNAPSHOT_WORK = "work.ext4";
export const snapshotRootFile = (strategy: VmRecord["rootDiskStrategy"]) =>
  strategy === "clone" ? "root.ext4" : "root.cow";

/** Whether the snapshot's memory holds file systems the agent froze (snapshot.json); false when unknown. */
export async function snapshotFrozen(dir: string): Promise<boolean> {
  try {
    return (JSON.parse(await readFile(join(dir, RECORD), "utf8")) as { frozen?: unknown }).frozen === true;
  } catch {
    return false;
  }
}

export function validSnapshotName(name: string): string {
  if (!SNAPSHOT_NAME.test(name)) {
    throw new InvalidArgumentError(`snapshot name must match ${SNAPSHOT_NAME.source}`, {
      reason: "INVALID_SNAPSHOT_NAME",
    });
  }
  return name;
}

/** `<state>/snapshots`: one directory per snapshot. */
export function snapshotsDir(ctx: VmContext): string {
  return join(ctx.state.stateDir, "snapshots");
}

function notRunning(name: string): FailedPreconditionError {
  return new FailedPreconditionError(`VM ${name} is not running`, { reason: "VM_NOT_RUNNING" });
}

/** Snapshot names being taken, per service: two snapshots of one name never share a directory. */
const taking = new WeakMap<VmContext, Set<string>>();

export async function snapshotVm(ctx: VmContext, name: string, as: string): Promise<OperationRecord> {
  validSnapshotName(as);
  const vm = await ctx.find(name);
  if (!ctx.runtime.handles.has(vm.id)) throw notRunning(name);
  const names = taking.get(ctx) ?? new Set<string>();
  taking.set(ctx, names);
  if (names.has(as) || (await getSnapshot(ctx.db, as))) {
    throw new AlreadyExistsError(`a snapshot named "${as}" already exists`, { reason: "SNAPSHOT_NAME_TAKEN" });
  }
  names.add(as);
  try {
    return await ctx.operations.start("snapshot-vm", name, (op) =>
      ctx.runtime
        .lifecycle(name, async () => {
          const current = await ctx.find(name);
          const handle = ctx.runtime.handles.get(current.id);
          if (!handle) throw notRunning(name);
          const snapshot = await takeSnapshot(ctx, op, current, handle, as);
          return { kind: "snapshot" as const, snapshot };
        })
        .finally(() => names.delete(as)),
    );
  } catch (error) {
    names.delete(as);
    throw error;
  }
}

async function takeSnapshot(
  ctx: VmContext,
  op: OperationContext,
  vm: VmRecord,
  handle: Handles,
  as: string,
): Promise<SnapshotView> {
  const driver = ctx.vmm.drivers[vm.vmm];
  const dir = join(snapshotsDir(ctx), as);
  let frozen = false;
  let pausedHere = false;
  let dirMade = false;
  let recorded = false;
  try {
    await op.stage("freeze", async () => {
      frozen = await freeze(ctx, op, vm, handle);
    });
    await op.stage("pause", async () => {
      if (handle.paused) return op.note("pause", "already paused: it stays paused");
      await driver.pause(handle.controlSocket);
      pausedHere = true;
      await ctx.runtime.saveHandles(vm, { ...handle, paused: true });
    });
    const files = ctx.state.vm(vm.id);
    const copies = { rootDisk: join(dir, snapshotRootFile(vm.rootDiskStrategy)), workDisk: join(dir, SNAPSHOT_WORK) };
    await op.stage("copy-disks", async () => {
      await mkdir(snapshotsDir(ctx), { recursive: true, mode: 0o700 });
      await rm(dir, { recursive: true, force: true }); // files left by a snapshot cut off before its row
      await mkdir(dir, { mode: 0o700 });
      dirMade = true;
      const root = vm.rootDiskStrategy === "clone" ? files.rootDisk : files.rootCow;
      await copySparse(root, copies.rootDisk, { signal: op.signal });
      await copySparse(files.workDisk, copies.workDisk, { signal: op.signal });
    });
    // The VMM's state names the snapshot's copies of the disks, not the VM's (which go with it).
    const own = { rootDisk: handle.root?.device ?? files.rootDisk, workDisk: files.workDisk };
    await op.stage("save-state", () => driver.save(handle.controlSocket, dir, op.signal, { copies, own }));
    const record: SnapshotRecord = {
      name: as,
      vmName: vm.name,
      vmId: vm.id,
      imageName: vm.imageName,
      kernelName: vm.kernelName,
      vmm: vm.vmm,
      vcpu: vm.vcpu,
      memoryMib: vm.memoryMib,
      workDiskMib: vm.workDiskMib,
      rootDiskStrategy: vm.rootDiskStrategy,
      mac: vm.mac,
      createdAt: ctx.now(),
    };
    await op.stage("record", async () => {
      await writeFile(join(dir, RECORD), JSON.stringify({ ...record, frozen }, null, 2), { mode: 0o600 });
      await insertSnapshot(ctx.db, record);
      recorded = true;
    });
    // Each flag is cleared inside its stage, as soon as the step is done: an undo never repeats it.
    if (pausedHere) {
      await op.stage("resume", async () => {
        await resumeHandles(ctx, vm, { ...handle, paused: true });
        pausedHere = false;
      });
    }
    if (frozen) {
      await op.stage("thaw", async () => {
        await agentOf(ctx, vm, handle).fsfreeze("thaw", FSFREEZE_MS);
        frozen = false;
      });
    }
    // The guest stood still while its disks were copied and its state written: its clock is set again.
    if (!handle.paused) {
      ctx.logger.info({ vm: vm.name, snapshot: as, clock: await setGuestClock(ctx, vm, handle) }, "snapshot taken");
    } else {
      ctx.logger.info({ vm: vm.name, snapshot: as }, "snapshot taken");
    }
    return { ...record, allocatedBytes: await allocatedBytes(dir) };
  } catch (error) {
    const undo = async (what: string, step: () => Promise<unknown>) =>
      step().catch((undoError: unknown) =>
        ctx.logger.error({ vm: vm.name, snapshot: as, err: undoError }, `could not ${what} after a failed snapshot`),
      );
    if (recorded) await undo("delete the snapshot's row", () => deleteSnapshot(ctx.db, as));
    if (dirMade) await undo("remove the snapshot's files", () => rm(dir, { recursive: true, force: true }));
    if (pausedHere) await undo("resume the guest", () => resumeHandles(ctx, vm, { ...handle, paused: true }));
    if (frozen) await undo("thaw the guest", () => agentOf(ctx, vm, handle).fsfreeze("thaw", FSFREEZE_MS));
    throw error;
  }
}

/**
 * Freezes the guest's file systems through its agent so that the disks copied next are clean; false
 * (with a note) when it cannot: no agent, a paused guest, or an agent that refuses (the copies are
 * then what a power cut would leave, which the memory saved with them makes whole on a restore).
 */
async function freeze(ctx: VmContext, op: OperationContext, vm: VmRecord, handle: Handles): Promise<boolean> {
  const skip = async (why: string) => {
    await op.note("freeze", `skipped: ${why}`);
    return false;
  };
  if (handle.paused) return skip("the guest is paused");
  if (!handle.agent) return skip("the VM has no guest agent");
  try {
    const count = await agentOf(ctx, vm, handle).fsfreeze("freeze", FSFREEZE_MS);
    await op.note("freeze", `${count} file system${count === 1 ? "" : "s"} frozen`);
    return true;
  } catch (error) {
    return skip(`the guest agent did not freeze: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** Bytes the files of directory `dir` take on disk. */
async function allocatedBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (entry.isFile()) total += (await stat(join(dir, entry.name))).blocks * 512;
  }
  return total;
}

async function view(ctx: VmContext, snapshot: SnapshotRecord): Promise<SnapshotView> {
  const bytes = await allocatedBytes(join(snapshotsDir(ctx), snapshot.name)).catch(() => 0);
  return { ...snapshot, allocatedBytes: bytes };
}

export async function listSnapshotViews(ctx: VmContext): Promise<SnapshotView[]> {
  return Promise.all((await listSnapshots(ctx.db)).map((snapshot) => view(ctx, snapshot)));
}

export async function getSnapshotView(ctx: VmContext, name: string): Promise<SnapshotView> {
  const snapshot = await getSnapshot(ctx.db, validSnapshotName(name));
  if (!snapshot) throw new NotFoundError(`snapshot "${name}" does not exist`, { reason: "SNAPSHOT_NOT_FOUND" });
  return view(ctx, snapshot);
}

/** Deletes the row, then the files (a delete cut off between leaves files without a row, removed by the next snapshot of that name). */
export async function deleteSnapshotByName(ctx: VmContext, name: string): Promise<{ existed: boolean }> {
  const existed = await deleteSnapshot(ctx.db, validSnapshotName(name));
  await rm(join(snapshotsDir(ctx), name), { recursive: true, force: true });
  if (existed) ctx.logger.info({ snapshot: name }, "snapshot deleted");
  return { existed };
}
