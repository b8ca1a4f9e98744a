/**
 * Creating a VM. Before the operation: the request is checked (name, sizes,
 * image, kernel) and the capabilities' preflight hooks run. The operation,
 * under the VM's lifecycle lock: kernel (only when none exists) →
 * resolve-image → reserve (name, addresses, row, under the short reservation
 * lock) → work-disk and tap (meanwhile) → root-disk → fsck → guest-files → boot.
 * Each stage that changed the host pushes its undo; a failure unwinds them in
 * reverse and then removes whatever the helper still lists for the VM.
 */
import { randomBytes } from "node:crypto";
import { chmod, mkdir, rm, writeFile } from "node:fs/promises";
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from "@banger/common";
import {
  deleteVm,
  getDefaultKernel,
  getKernel,
  getVmById,
  getVmByName,
  insertVm,
  listVms,
  type ImageRecord,
  type OperationRecord,
  type OperationResult,
  type PublishedPort,
  type VmRecord,
} from "../../store/index.js";
import { checkNoClash } from "../port-publishing.js";
import { CATALOG, isKnownImageName } from "../images.js";
import type { OperationContext } from "../operations.js";
import { explainVmFailure } from "../readiness.js";
import { allocateGuestIp, allocateMac, allocateVsockCid } from "../vm-addresses.js";
import { boot, bootLogs, takeTapAhead } from "./boot.js";
import { scopeOf, type VmContext } from "./context.js";
import { removeHostResources, removeRunDir } from "./host-cleanup.js";
import { validMemoryMib, validVcpu, validVmName, type CreateVmRequest } from "./model.js";
import { generateVmName } from "./names.js";
import { forgetHostKey } from "../vm-observe.js";
import { vmResult } from "./result.js";
import { checkWantedPorts, underPublishLock } from "./publish.js";
import { makeRootDisk, detachRoot } from "./root-disk.js";
import { staged, unwind, type UndoList } from "./undo.js";

/** A checked create request, with the defaults of the config filled in. */
export interface CreatePlan {
  readonly req: CreateVmRequest;
  readonly name: string;
  readonly vcpu: number;
  readonly memoryMib: number;
  readonly imageName: string;
  readonly workDiskMib: number;
  readonly nat: boolean;
  /** The host ports it publishes, checked (valid, clashing with no other VM's, free on the host). */
  readonly publishedPorts: readonly PublishedPort[];
  /** "": none named and none imported at all; stage `kernel` imports the host's installed kernel. */
  readonly kernelName: string;
}

/** Checks the request, then starts the create's operation; the VM is theirs to delete while it runs. */
export async function createVm(ctx: VmContext, req: CreateVmRequest): Promise<OperationRecord> {
  const plan = await planCreate(ctx, req);
  const { name, nat, workDiskMib } = plan;
  await ctx.eachCapability(false, (c) => c.preflight?.({ vmName: name, nat, workDiskMib }));
  const operation = await ctx.operations.start("create-vm", name, (op) =>
    // The create holds the VM's lifecycle lock: start/stop/delete wait for it (delete cancels it first).
    ctx.runtime.lifecycle(name, () => createSteps(ctx, plan, op)).finally(() => ctx.runtime.creating.delete(name)),
  );
  ctx.runtime.creating.set(name, operation.id);
  return operation;
}

/** The work disk must hold the image's work seed (and at least 16 MiB). */
function checkWorkDisk(workDiskMib: number, workSeedBytes: number): void {
  const least = Math.max(Math.ceil(workSeedBytes / 1048576), 16);
  if (workDiskMib < least) {
    throw new InvalidArgumentError(`work_disk_mib must be at least ${least}, got ${workDiskMib}`, {
      reason: "INVALID_DISK_SIZE",
    });
  }
}

async function planCreate(ctx: VmContext, req: CreateVmRequest): Promise<CreatePlan> {
  const { config, db } = ctx;
  const name = await chooseName(ctx, req.name);
  const vcpu = validVcpu(req.vcpu || config.vm.vcpu);
  const memoryMib = validMemoryMib(req.memoryMib || config.vm.memoryMib);
  const imageName = req.image || config.defaultImage;
  // A local image, or a catalog name pulled (a built-in one built) in stage resolve-image.
  const local = await ctx.images.get(imageName).catch((error: unknown) => {
    if (error instanceof NotFoundError && isKnownImageName(imageName)) return undefined;
    throw error instanceof NotFoundError
      ? new NotFoundError(`image ${imageName} is neither local nor in the catalog; pull it with 'banger image pull'`, {
          reason: "IMAGE_NOT_FOUND",
        })
      : error;
  });
  const workDiskMib = req.workDiskMib || config.vm.workDiskMib;
  checkWorkDisk(workDiskMib, local?.workSeedBytes ?? 0);
  const catalogKernel = CATALOG.find((entry) => entry.name === imageName)?.defaultKernel ?? "";
  const kernelName =
    req.kernel || local?.defaultKernel || catalogKernel || config.defaultKernel || (await getDefaultKernel(db))?.name;
  if (kernelName && !(await getKernel(db, kernelName))) {
    throw new NotFoundError(`kernel ${kernelName} does not exist`, { reason: "KERNEL_NOT_FOUND" });
  }
  await checkNameFree(ctx, name);
  const nat = req.nat || config.vm.nat;
  const publishedPorts = await wantedPorts(ctx, req);
  return { req, name, vcpu, memoryMib, imageName, workDiskMib, nat, publishedPorts, kernelName: kernelName ?? "" };
}

/** The request's name, or (none) a readable one (brave-otter) not taken by a VM or a create under way. */
export async function chooseName(ctx: VmContext, requested: string): Promise<string> {
  if (requested !== "") return validVmName(requested);
  return generateVmName(
    async (candidate) => ctx.runtime.creating.has(candidate) || !!(await getVmByName(ctx.db, candidate)),
  );
}

export async function checkNameFree(ctx: VmContext, name: string): Promise<void> {
  if (await getVmByName(ctx.db, name)) {
    throw new AlreadyExistsError(`a VM named ${name} already exists`, { reason: "VM_NAME_TAKEN" });
  }
}

/** The host ports the request publishes, checked, each free on the host now. */
export async function wantedPorts(ctx: VmContext, req: CreateVmRequest): Promise<readonly PublishedPort[]> {
  const publishedPorts = await checkWantedPorts(ctx, req.publishedPorts ?? [], undefined);
  for (const port of publishedPorts) await ctx.relays.probe(port);
  return publishedPorts;
}

async function createSteps(ctx: VmContext, plan: CreatePlan, op: OperationContext): Promise<OperationResult> {
  const { req, name } = plan;
  const undo: UndoList = [];
  let vm: VmRecord | undefined;
  /** Stages run beside the root disk's: awaited before the boot, or before unwinding. */
  let meanwhile: Promise<unknown>[] = [];
  try {
    const kernelName =
      plan.kernelName !== ""
        ? plan.kernelName
        : await op.stage("kernel", async () => {
            const { kernel, imported } = await ctx.kernels.ensureDefault(op);
            if (imported) await op.note("kernel", imported);
            return kernel.name;
          });
    const image = await op.stage("resolve-image", async () => {
      // The default image may be stood in for by the built-in one when its registry is unreachable.
      const found =
        req.image === ""
          ? await ctx.images.ensureDefault(plan.imageName, op, "resolve-image", scopeOf(op))
          : await ctx.images.ensureLocal(plan.imageName, op, "resolve-image", scopeOf(op));
      checkWorkDisk(plan.workDiskMib, found.workSeedBytes);
      return found;
    });
    // Asked while the root disk is made: a copy of a clean image, unchanged meanwhile, needs no fsck of its own.
    const imageRootfs = ctx.state.image(image.name).rootfs;
    const cleanBefore = ctx.guest.cleanRootfs(imageRootfs).catch(() => undefined);
    const id = randomBytes(6).toString("hex");
    // Registered first, and safe whatever the stage got to: its own failure may come after the row was written.
    undo.push(async () => {
      const reserved = await getVmById(ctx.db, id);
      if (reserved) await deleteVm(ctx.db, reserved.name);
      await rm(ctx.state.vm(id).dir, { recursive: true, force: true });
    });
    vm = await op.stage("reserve", () => reserve(ctx, op, plan, { id, image, kernelName }));
    const created = vm;
    ctx.runtime.phases.set(created.id, "creating");
    const paths = ctx.state.vm(created.id);
    const workDisk = op.stage("work-disk", () =>
      ctx.guest.prepareWorkDisk({
        target: paths.workDisk,
        ...(image.workSeedBytes > 0 ? { seedPath: ctx.state.image(image.name).workSeed } : {}),
        sizeMib: plan.workDiskMib,
        signal: op.signal,
      }),
    );
    workDisk.catch(() => undefined); // awaited below, or before unwinding
    // The tap does not depend on the disks either: taken meanwhile (its undo pushed once it is made).
    const tap = takeTapAhead(ctx, op, created, undo);
    meanwhile = [workDisk, tap];
    const scope = scopeOf(op);
    const root = await staged(
      op,
      undo,
      "root-disk",
      () => makeRootDisk(ctx, created, image, op.signal, scope),
      (attached) => detachRoot(ctx, created, attached, { signal: new AbortController().signal }),
    );
    await op.stage("fsck", async () => {
      const before = await cleanBefore;
      if (before !== undefined && before === (await ctx.guest.cleanRootfs(imageRootfs).catch(() => undefined))) {
        await op.track("fsck", "running", `not needed: a fresh copy of image ${image.name}, which e2fsck found clean`);
        return;
      }
      await ctx.host.checkFilesystem(created.id, scope);
    });
    await op.stage("guest-files", async () => {
      await ctx.host.writeGuestFiles(created.id, ctx.guest.rootDiskFiles(created, ctx.network), scope);
    });
    // The work disk does not depend on the root disk: it is built meanwhile.
    await workDisk;
    await boot(ctx, op, created, undo, {
      skipSshWait: req.skipSshWait,
      sshTimeoutMs: req.sshTimeoutMs,
      tap,
      ...(created.rootDiskStrategy === "dm-snapshot" ? { root } : {}),
    });
    await rm(paths.creatingMarker, { force: true });
    ctx.runtime.phases.delete(created.id);
    ctx.logger.info({ vm: name, id: created.id, ip: created.guestIp }, "VM created");
    return vmResult(ctx, name);
  } catch (error) {
    await abandonCreate(ctx, op, name, vm, undo, meanwhile, error);
    throw error;
  }
}

/**
 * Stage reserve: the VM's directory with its create marker, then its row with free addresses. The VMM
 * and root disk strategy are the host's choice, unless given (a fork has its snapshot's).
 */
export async function reserve(
  ctx: VmContext,
  op: OperationContext,
  plan: CreatePlan,
  chosen: {
    id: string;
    image: ImageRecord;
    kernelName: string;
    vmm?: VmRecord["vmm"];
    rootDiskStrategy?: VmRecord["rootDiskStrategy"];
  },
): Promise<VmRecord> {
  const { id } = chosen;
  const strategy = chosen.rootDiskStrategy ?? (await ctx.choices.rootDiskStrategy(scopeOf(op)));
  const vmm = chosen.vmm ?? (await ctx.choices.vmm(scopeOf(op)));
  const paths = ctx.state.vm(id);
  // The marker goes first: whatever a crash cuts off from here on is found and undone at start-up.
  // The group may traverse it: an installed helper (root without CAP_DAC_OVERRIDE, in banger's
  // group) opens the root disk in it. The service's umask would take that bit away: chmod.
  // The id is this create's alone: none of it needs the lock, which parallel creates wait for.
  await mkdir(paths.dir, { recursive: true, mode: 0o750 });
  await chmod(paths.dir, 0o750);
  await writeFile(paths.creatingMarker, op.id, { mode: 0o600 });
  // Under the lock only what must be unique among VMs: the name's row and its addresses.
  return ctx.runtime.underReservation(() =>
    underPublishLock(ctx, async () => {
      const existing = await listVms(ctx.db);
      // A port another VM took since the create was checked is refused now.
      checkNoClash(plan.publishedPorts, existing);
      return insertVm(ctx.db, {
        id,
        name: plan.name,
        imageName: chosen.image.name,
        kernelName: chosen.kernelName,
        vcpu: plan.vcpu,
        memoryMib: plan.memoryMib,
        workDiskMib: plan.workDiskMib,
        guestIp: allocateGuestIp(ctx.network, new Set(existing.map((v) => v.guestIp))),
        mac: allocateMac(id, new Set(existing.map((v) => v.mac))),
        vsockCid: allocateVsockCid(new Set(existing.map((v) => v.vsockCid))),
        nat: plan.nat,
        vmm,
        rootDiskStrategy: strategy,
        desiredState: "running",
        createdAt: ctx.now(),
        publishedPorts: plan.publishedPorts,
      });
    }),
  );
}

/** A create that failed or was cancelled: its stages undone, and whatever the host still lists for it removed. */
export async function abandonCreate(
  ctx: VmContext,
  op: OperationContext,
  name: string,
  vm: VmRecord | undefined,
  undo: UndoList,
  meanwhile: readonly Promise<unknown>[],
  error: unknown,
): Promise<void> {
  if (vm) ctx.runtime.phases.set(vm.id, "deleting");
  // Nothing may still be writing when the directory goes, nor a tap be made after its undo ran.
  await Promise.allSettled(meanwhile);
  // What the guest and its VMM printed goes with the error (the operation keeps it): the unwind
  // removes the runtime directory with the logs.
  if (vm && !op.signal.aborted) await explainVmFailure(error, bootLogs(ctx, vm.id));
  await unwind(ctx.logger, undo, name);
  if (!vm) return;
  // The first SSH connection (a fork's wait-ssh, a create's warm-up) pinned the guest's host key: it goes with the
  // VM, as at a delete, or a later VM of this name would be refused.
  await ctx.connections.closeGuest(vm.id);
  await forgetHostKey(ctx.ssh.knownHostsFile, name).catch((forgetError: unknown) =>
    ctx.logger.error({ vm: name, err: forgetError }, "could not forget the VM's host key"),
  );
  // A helper call cut off by a cancel may have done its work without the answer arriving:
  // whatever the inventory still lists for this VM goes too.
  const scope = { signal: AbortSignal.timeout(30_000) };
  const inventory = await ctx.host.inventory(scope).catch(() => undefined);
  if (inventory) await removeHostResources(ctx, vm.id, inventory, scope);
  await removeRunDir(ctx, vm.id, scope).catch((removeError: unknown) =>
    ctx.logger.error({ vm: name, err: removeError }, "could not remove the VM's runtime directory"),
  );
  ctx.runtime.phases.delete(vm.id);
  ctx.runtime.handles.delete(vm.id);
}
