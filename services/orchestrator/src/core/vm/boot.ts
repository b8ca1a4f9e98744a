/**
 * Booting a VM that has its disks: (root device) → tap → launch-vmm →
 * configure-vmm → start-vmm → (wait-agent) → wait-ssh → network, each stage
 * that changed the host pushing its undo. A VM with a saved state has
 * resume-vmm in place of configure-vmm and start-vmm. Create, start and restart end here
 * (a create takes its tap ahead, beside its disks).
 */
import { DeadlineExceededError, NotFoundError } from "@banger/common";
import { getKernel, updateVm, type VmRecord } from "../../store/index.js";
import { kernelFiles } from "../kernels.js";
import type { OperationContext } from "../operations.js";
import type { LaunchedVmm, MachineSpec, VmmDriver } from "../ports.js";
import { whileVmmRuns } from "../readiness.js";
import { setGuestClock, waitForAgent } from "./agent.js";
import { giveIdentity } from "./identity.js";
import { guestTargetOf } from "./inspect.js";
import { scopeOf, type VmContext } from "./context.js";
import type { Handles, RootAttachment } from "./model.js";
import { attachRoot, detachRoot } from "./root-disk.js";
import type { SavedState } from "./saved-state.js";
import { staged, type UndoList } from "./undo.js";

const DEFAULT_SSH_TIMEOUT_MS = 60_000;

export interface BootOptions {
  readonly skipSshWait: boolean;
  readonly sshTimeoutMs: number | undefined;
  /** A dm-snapshot VM's root device a create already made (it is handed over, not attached again). */
  readonly root?: RootAttachment;
  /** The tap a create took while it made the disks (takeTapAhead), its undo already pushed. */
  readonly tap?: Promise<string>;
  /** A saved state to resume from (stage resume-vmm) instead of booting the kernel. */
  readonly restore?: SavedState;
  /** A fork: the snapshot's directory it resumes from (stage restore, then identity), never booting cold. */
  readonly fork?: { readonly dir: string; readonly frozen: boolean };
}

/** How a boot ended: the guest runs, or (a restore only) the saved state could not be resumed. */
export type BootOutcome = "running" | "restore-failed";

/**
 * Stage tap, started by a create beside its disks: the bridge ensured, then a warm-pool tap taken
 * over (or one made). Its undo is pushed once it succeeded; the create awaits it before unwinding,
 * so nothing is made after the undo ran (and the inventory sweep takes what a cut-off call made).
 */
export function takeTapAhead(ctx: VmContext, op: OperationContext, vm: VmRecord, undo: UndoList): Promise<string> {
  const taken = staged(
    op,
    undo,
    "tap",
    () => takeTap(ctx, op, vm),
    () => ctx.host.deleteTap(vm.id, { signal: new AbortController().signal }),
  );
  taken.catch(() => undefined); // awaited by boot, or before unwinding
  return taken;
}

/**
 * The helper's calls here are not cut off by a cancel, only bounded: a call the orchestrator stops waiting for
 * still makes its tap in the helper, after the create unwound (and after its inventory sweep). Run to their
 * answer, the tap is made before the unwind, its undo pushed, and deleted by it.
 */
const TAP_CALL_MS = 30_000;

async function takeTap(ctx: VmContext, op: OperationContext, vm: VmRecord): Promise<string> {
  const scope = { ...scopeOf(op), signal: AbortSignal.timeout(TAP_CALL_MS) };
  // Ensured once per orchestrator run, on the first boot; a failure is retried by the next one.
  await ctx.net.ready(scope);
  return ctx.net.takeTap(op, vm, scope);
}

/** Stages that bring a VM with disks to running. */
export async function boot(
  ctx: VmContext,
  op: OperationContext,
  vm: VmRecord,
  undo: UndoList,
  options: BootOptions,
): Promise<BootOutcome> {
  const { host } = ctx;
  const scope = scopeOf(op);
  const driver = ctx.vmm.drivers[vm.vmm];
  // A dm-snapshot VM's root device exists while it runs (a create hands over the one it made).
  const root =
    vm.rootDiskStrategy === "dm-snapshot"
      ? (options.root ??
        (await staged(
          op,
          undo,
          "root-disk",
          () => attachRoot(ctx, vm, scope),
          (attached) => detachRoot(ctx, vm, attached, { signal: AbortSignal.timeout(30_000) }),
        )))
      : undefined;
  const tap = await (options.tap ?? takeTapAhead(ctx, op, vm, undo));
  const machine = await machineSpec(ctx, vm, driver, tap, root);
  const spec: MachineSpec = options.restore || options.fork ? { ...machine.spec, incoming: true } : machine.spec;
  const kit = machine.kit;
  const launched = await staged(
    op,
    undo,
    "launch-vmm",
    () => driver.launch(spec, scope),
    async (vmm) => {
      await host.signalVmm(vm.id, vmm.pid, vmm.startTime, "kill", { signal: new AbortController().signal });
      await ctx.runtime.saveHandles(vm, undefined);
    },
  );
  const handle: Handles = {
    pid: launched.pid,
    startTime: launched.startTime.toISOString(),
    controlSocket: launched.controlSocket,
    logPath: launched.logPath,
    consolePath: launched.consolePath,
    tap,
    nat: false,
    ready: false,
    agent: kit,
    ...(root ? { root } : {}),
  };
  await ctx.runtime.saveHandles(vm, handle);
  if (options.restore && !(await resumeSaved(ctx, op, vm, driver, launched, options.restore, kit ? handle : undefined)))
    return "restore-failed";
  if (options.fork) {
    const { dir, frozen } = options.fork;
    const vmmRuns = async () => (await host.vmmState(vm.id, launched.pid, launched.startTime, scope)).running;
    await op.stage("restore", () =>
      whileVmmRuns(
        (signal) => driver.restore(launched, dir, signal, { tap, rootDisk: spec.rootDisk, workDisk: spec.workDisk }),
        vmmRuns,
        op.signal,
        undefined,
        "the VMM exited while it took the snapshot",
      ),
    );
    await giveIdentity(ctx, op, vm, handle, frozen);
  }
  await startVmm(ctx, op, vm, driver, launched, spec, handle, options);
  // Capabilities (DNS name, NAT, …) in dependency order; a failure unwinds all of their cleanups.
  undo.push(() => ctx.eachCapability(true, (c) => c.cleanup?.(vm, { signal: AbortSignal.timeout(30_000) })));
  await op.stage("network", async () => {
    await ctx.eachCapability(false, (c) => c.postStart?.(vm, scope));
    await ctx.runtime.saveHandles(vm, { ...handle, ready: !options.skipSshWait });
  });
  await updateVm(ctx.db, vm.name, {
    updatedAt: ctx.now(),
    desiredState: "running",
    lastError: null,
    startedAt: ctx.now(),
  });
  return "running";
}

/**
 * Stage resume-vmm: the VMM takes the saved state and runs the guest on. It does not fail: a state the
 * VMM refuses leaves a note and false, and the caller unwinds and boots cold.
 */
async function resumeSaved(
  ctx: VmContext,
  op: OperationContext,
  vm: VmRecord,
  driver: VmmDriver,
  launched: LaunchedVmm,
  saved: SavedState,
  /** The handles of a guest with the kit's agent, whose clock is set once it runs. */
  agent: Handles | undefined,
): Promise<boolean> {
  const vmmRuns = async () => (await ctx.host.vmmState(vm.id, launched.pid, launched.startTime, scopeOf(op))).running;
  return op.stage("resume-vmm", async () => {
    try {
      await whileVmmRuns(
        (signal) => driver.restore(launched, saved.dir, signal),
        vmmRuns,
        op.signal,
        undefined,
        "the VMM exited while it took the saved state",
      );
      const resumed = `resumed from the state saved at ${saved.savedAt}`;
      await op.track("resume-vmm", "running", resumed);
      // The guest's clock is where it was saved. (The stage's note is its last message: both in it.)
      if (agent) await op.track("resume-vmm", "running", `${resumed}; ${await setGuestClock(ctx, vm, agent)}`);
      return true;
    } catch (error) {
      if (op.signal.aborted) throw error;
      ctx.logger.warn({ vm: vm.name, err: error }, "could not resume from the saved state: booting cold");
      await op.track(
        "resume-vmm",
        "running",
        `could not resume from the saved state (${(error as Error).message}): booting cold instead`,
      );
      return false;
    }
  });
}

/** What the VMM boots: the kernel (and initrd) of the VM's kernel, its disks, tap and addresses. */
async function machineSpec(
  ctx: VmContext,
  vm: VmRecord,
  driver: VmmDriver,
  tap: string,
  root: RootAttachment | undefined,
): Promise<{ spec: MachineSpec; kit: boolean }> {
  const kernel = await getKernel(ctx.db, vm.kernelName);
  if (!kernel) throw new NotFoundError(`kernel ${vm.kernelName} does not exist`, { reason: "KERNEL_NOT_FOUND" });
  const files = kernelFiles(ctx.kernels.dir(kernel.name), kernel);
  const paths = ctx.state.vm(vm.id);
  const spec: MachineSpec = {
    vmId: vm.id,
    vcpu: vm.vcpu,
    memoryMib: vm.memoryMib,
    kernelPath: files.kernel,
    initrdPath: files.initrd,
    // banger.id: banger's initramfs makes this VM its own SSH host keys instead of the image's.
    bootArgs: `${driver.kernelArgs} root=/dev/vda rw ${ctx.guest.bootArgsIp(vm, ctx.network)} banger.id=${vm.id}`,
    rootDisk: root?.device ?? paths.rootDisk,
    workDisk: paths.workDisk,
    tap,
    mac: vm.mac,
    vsockCid: vm.vsockCid,
  };
  return { spec, kit: files.kit };
}

/** configure-vmm, start-vmm, then (unless skipped) the waits for the guest's agent and SSH. */
async function startVmm(
  ctx: VmContext,
  op: OperationContext,
  vm: VmRecord,
  driver: VmmDriver,
  launched: LaunchedVmm,
  spec: MachineSpec,
  handle: Handles,
  options: BootOptions,
): Promise<void> {
  const vmmRuns = async () => (await ctx.host.vmmState(vm.id, launched.pid, launched.startTime, scopeOf(op))).running;
  // A resumed guest (or a fork) runs already: nothing to configure or start.
  if (!options.restore && !options.fork) {
    // A VMM that exits after making its socket (QEMU makes QMP's before it opens the tap) ends the wait for its
    // API at once; what it printed goes with the error (explainVmFailure).
    await op.stage("configure-vmm", () =>
      whileVmmRuns(
        (signal) => driver.configure(launched, spec, signal),
        vmmRuns,
        op.signal,
        undefined,
        "the VMM exited before it answered on its API socket",
      ),
    );
    await op.stage("start-vmm", () => driver.start(launched));
  }
  await ctx.runtime.saveHandles(vm, { ...handle, ready: false });
  if (options.skipSshWait) {
    await op.track("wait-ssh", "running");
    await op.track("wait-ssh", "done", "skipped: not waiting for the guest");
    return;
  }
  const timeoutMs = options.sshTimeoutMs ?? DEFAULT_SSH_TIMEOUT_MS;
  // The SSH banner is looked for from now on, while the agent is waited for (the guest kit starts both at
  // once): wait-ssh then ends as soon as it has been seen instead of starting to look. Its timeout still counts
  // from its own start.
  const probe = new AbortController();
  const probing = AbortSignal.any([op.signal, probe.signal]);
  const lookForBanner = () => ctx.guest.waitForSsh(vm.guestIp, Number.POSITIVE_INFINITY, probing);
  // The kept connection the first command will use (guest-connections.ts). A fork's SSH server runs already
  // (the snapshot's): that connection is made at once, and is what wait-ssh waits for (a banner probe beside
  // it would cost the guest a server process of its own); should it fail (a server that takes no key of
  // banger's, one restarting), the banner is. A create's is made as soon as the banner is seen, while the
  // agent may still be waited for.
  const banner = options.fork
    ? guestTargetOf(ctx, vm, handle)
        .then((target) => ctx.connections.connect(target, probing))
        .catch(lookForBanner)
    : lookForBanner().then(() => {
        guestTargetOf(ctx, vm, handle).then(
          (target) => ctx.connections.warm(target),
          () => undefined,
        );
      });
  banner.catch(() => undefined);
  try {
    // Both waits end early when the VMM exits (a guest that panics or powers off): no point waiting out the timeout.
    // banger's guest kit: the agent answers (it starts before any SSH server).
    // A fork's identity stage has had its agent answer already.
    if (handle.agent && !options.fork) {
      await op.stage("wait-agent", async () => {
        const version = await whileVmmRuns(
          (signal) => waitForAgent(ctx, vm, handle, timeoutMs, signal),
          vmmRuns,
          op.signal,
        );
        await op.track("wait-agent", "running", `qemu-ga ${version} answers`);
      });
    }
    await op.stage("wait-ssh", () =>
      whileVmmRuns((signal) => within(banner, timeoutMs, signal, vm.guestIp), vmmRuns, op.signal),
    );
  } finally {
    probe.abort();
  }
}

/** `banner` (the wait for the guest's SSH), failing SSH_TIMEOUT after `timeoutMs`, or when `signal` aborts. */
async function within(banner: Promise<void>, timeoutMs: number, signal: AbortSignal, ip: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new DeadlineExceededError(`the guest's SSH at ${ip}:22 did not answer within ${timeoutMs} ms`, {
            reason: "SSH_TIMEOUT",
          }),
        ),
      timeoutMs,
    );
    onAbort = () => reject(signal.reason instanceof Error ? signal.reason : new Error("the wait was stopped"));
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([banner, limit]);
  } finally {
    clearTimeout(timer);
    if (onAbort) signal.removeEventListener("abort", onAbort);
  }
}

/** A VM's logs in its runtime directory (the guest console, the VMM's own log): what explainVmFailure reads. */
export function bootLogs(ctx: VmContext, id: string): { console: string; vmmLog: string } {
  const paths = ctx.run.vm(id);
  return { console: paths.consoleLog, vmmLog: paths.vmmLog };
}
