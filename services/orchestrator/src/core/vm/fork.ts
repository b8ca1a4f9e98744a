/**
 * Forks (`banger vm create --from SNAP`): a new VM that resumes from a snapshot's memory instead of
 * booting. It has the snapshot's image, kernel, VMM, vCPUs, memory and work disk size, and its own
 * name, addresses and files. Stages, under the new VM's lifecycle lock: reserve (as a create) →
 * copy-disks (the snapshot's root and work disks into the VM's directory, reflinked or sparse) and tap
 * meanwhile → (root-disk, dm-snapshot only) → launch-vmm (to take a state) → restore → identity (see
 * identity.ts) → wait-agent → wait-ssh → network. A failure unwinds like a create's; a fork never falls
 * back to a cold boot (its disks are the snapshot's, which only its memory makes whole).
 */
import { randomBytes } from "node:crypto";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError, NotFoundError, copySparse } from "@banger/common";
import { deleteVm, getSnapshot, getVmById, type OperationRecord, type VmRecord } from "../../store/index.js";
import type { OperationContext } from "../operations.js";
import { boot, takeTapAhead } from "./boot.js";
import { type VmContext } from "./context.js";
import { abandonCreate, checkNameFree, chooseName, reserve, wantedPorts, type CreatePlan } from "./create.js";
import type { CreateVmRequest } from "./model.js";
import { vmResult } from "./result.js";
import { SNAPSHOT_WORK, snapshotFrozen, snapshotRootFile, snapshotsDir, validSnapshotName } from "./snapshot.js";
import type { UndoList } from "./undo.js";

type SnapshotOf = NonNullable<Awaited<ReturnType<typeof getSnapshot>>>;

/** Checks the request against its snapshot, then starts the fork's operation (kind create-vm). */
export async function forkVm(ctx: VmContext, req: CreateVmRequest): Promise<OperationRecord> {
  const snapshot = await getSnapshot(ctx.db, validSnapshotName(req.fromSnapshot ?? ""));
  if (!snapshot) {
    throw new NotFoundError(`snapshot "${req.fromSnapshot}" does not exist`, { reason: "SNAPSHOT_NOT_FOUND" });
  }
  checkFitsSnapshot(req, snapshot);
  const name = await chooseName(ctx, req.name);
  await checkNameFree(ctx, name);
  const plan: CreatePlan = {
    req,
    name,
    vcpu: snapshot.vcpu,
    memoryMib: snapshot.memoryMib,
    imageName: snapshot.imageName,
    workDiskMib: snapshot.workDiskMib,
    nat: req.nat || ctx.config.vm.nat,
    publishedPorts: await wantedPorts(ctx, req),
    kernelName: snapshot.kernelName,
  };
  await ctx.eachCapability(false, (c) => c.preflight?.({ vmName: name, nat: plan.nat, workDiskMib: plan.workDiskMib }));
  const operation = await ctx.operations.start("create-vm", name, (op) =>
    ctx.runtime
      .lifecycle(name, () => forkSteps(ctx, plan, snapshot, op))
      .finally(() => ctx.runtime.creating.delete(name)),
  );
  ctx.runtime.creating.set(name, operation.id);
  return operation;
}

/** A fork is its snapshot's machine: a request that sets another image, kernel or size is refused. */
function checkFitsSnapshot(req: CreateVmRequest, snapshot: SnapshotOf): void {
  const fields: [given: string | number, theirs: string | number, what: string, unit: string][] = [
    [req.image, snapshot.imageName, "image", ""],
    [req.kernel, snapshot.kernelName, "kernel", ""],
    [req.vcpu, snapshot.vcpu, "vcpu", ""],
    [req.memoryMib, snapshot.memoryMib, "memory", " MiB"],
    [req.workDiskMib, snapshot.workDiskMib, "work disk", " MiB"],
  ];
  const differs = fields
    .filter(([given, theirs]) => given !== "" && given !== 0 && given !== theirs)
    .map(([given, theirs, what, unit]) => `${what} ${given}${unit} (the snapshot's is ${theirs}${unit})`);
  if (differs.length > 0) {
    throw new InvalidArgumentError(
      `a fork of snapshot ${snapshot.name} has its machine; leave these out: ${differs.join(", ")}`,
      { reason: "SNAPSHOT_MISMATCH" },
    );
  }
}

async function forkSteps(ctx: VmContext, plan: CreatePlan, snapshot: SnapshotOf, op: OperationContext) {
  const { name } = plan;
  const dir = join(snapshotsDir(ctx), snapshot.name);
  const undo: UndoList = [];
  let vm: VmRecord | undefined;
  let meanwhile: Promise<unknown>[] = [];
  try {
    const image = await ctx.images.get(snapshot.imageName);
    const id = randomBytes(6).toString("hex");
    undo.push(async () => {
      const reserved = await getVmById(ctx.db, id);
      if (reserved) await deleteVm(ctx.db, reserved.name);
      await rm(ctx.state.vm(id).dir, { recursive: true, force: true });
    });
    vm = await op.stage("reserve", () =>
      reserve(ctx, op, plan, {
        id,
        image,
        kernelName: snapshot.kernelName,
        vmm: snapshot.vmm,
        rootDiskStrategy: snapshot.rootDiskStrategy,
      }),
    );
    const created = vm;
    ctx.runtime.phases.set(created.id, "creating");
    const tap = takeTapAhead(ctx, op, created, undo);
    meanwhile = [tap];
    const paths = ctx.state.vm(created.id);
    await op.stage("copy-disks", async () => {
      const root = created.rootDiskStrategy === "clone" ? paths.rootDisk : paths.rootCow;
      await copySparse(join(dir, snapshotRootFile(created.rootDiskStrategy)), root, { signal: op.signal });
      await copySparse(join(dir, SNAPSHOT_WORK), paths.workDisk, { signal: op.signal });
      await op.note("copy-disks", `from snapshot ${snapshot.name} (of VM ${snapshot.vmName})`);
    });
    await boot(ctx, op, created, undo, {
      skipSshWait: plan.req.skipSshWait,
      sshTimeoutMs: plan.req.sshTimeoutMs,
      tap,
      fork: { dir, frozen: await snapshotFrozen(dir) },
    });
    await rm(paths.creatingMarker, { force: true });
    ctx.runtime.phases.delete(created.id);
    ctx.logger.info({ vm: name, id: created.id, ip: created.guestIp, snapshot: snapshot.name }, "VM forked");
    return vmResult(ctx, name);
  } catch (error) {
    await abandonCreate(ctx, op, name, vm, undo, meanwhile, error);
    throw error;
  }
}
