/**
 * The VM lifecycle: create (stages, each undone in reverse when a later one
 * fails), start, stop, restart, delete, set, and what a VM is now.
 *
 * Durable vs transient: the row says what a VM is; what is currently true on
 * the host (the VMM's pid and start time, the tap, the NAT rule) lives in
 * memory and in `<state>/vms/<id>/handles.json`, and is checked against the
 * host at start-up (see `recover`). Locks: one lifecycle lock per VM, and a
 * short reservation lock (name, addresses, row) for creates; the slow stages
 * of different VMs overlap.
 */
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdir, open, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  copySparse,
  processIsAlive,
  type Logger,
} from "@banger/common";
import type { Kysely } from "kysely";
import type { BangerConfig, VmmDriver as VmmDriverName } from "../config/index.js";
import {
  deleteVm,
  getDefaultKernel,
  getImage,
  getKernel,
  getVmById,
  getVmByName,
  insertVm,
  listVms,
  updateVm,
  type Database,
  type JsonObject,
  type OperationRecord,
  type VmRecord,
} from "../store/index.js";
import type { CallScope } from "./call-scope.js";
import type { GuestTarget } from "./guest-exec.js";
import type { GuestFileSpec, HostInventory, HostPort } from "./host.js";
import {
  CATALOG,
  ROOTFS_FILE,
  WORK_SEED_FILE,
  imageJson,
  isKnownImageName,
  validImageName,
  type ImageCatalog,
} from "./images.js";
import { kernelFiles, type KernelCatalog } from "./kernels.js";
import {
  firecrackerDriver,
  qemuDriver,
  type FirecrackerApi,
  type MachineSpec,
  type QmpApi,
  type VmmDriver,
} from "../vmm/drivers.js";
import { chooseRootDiskStrategy, chooseVmm, vmmBinariesPresent, type RootDiskStrategy } from "./host-choices.js";
import { createAgentClient, type AgentClient } from "../vmm/agent-client.js";
import type { OperationContext, Operations } from "./operations.js";
import { orderCapabilities, workDiskCapability, type Capability } from "./capabilities.js";
import { createSerialLock } from "./serial-lock.js";
import { forgetHostKey, measureVm, readLog, sshTarget, type SshTarget, type VmUsage } from "./vm-observe.js";
import { explainVmFailure, whileVmmRuns } from "./readiness.js";
import {
  allocateGuestIp,
  allocateMac,
  allocateVsockCid,
  parseBridgeAddress,
  type BridgeNetwork,
} from "./vm-addresses.js";

export type VmStateName = "creating" | "starting" | "running" | "stopping" | "stopped" | "failed" | "deleting";

/** Whether a VM's guest agent answers: "" when it is not running. */
export type AgentHealthName = "" | "ok" | "unreachable" | "none";

/** A VM as it is now: its row, its state, its VMM's pid (0 when none) and its agent's health. */
export interface VmView extends VmRecord {
  readonly state: VmStateName;
  readonly pid: number;
  readonly agentHealth: AgentHealthName;
  /** qemu-ga's version when it answered. */
  readonly agentVersion: string;
}

export type { FirecrackerApi, QmpApi } from "../vmm/drivers.js";

/** What the lifecycle needs to build disks and reach guests; the guest/ module and ssh provide them. */
export interface GuestPort {
  /** Files banger writes into the root filesystem (hostname, network, resolver). */
  rootDiskFiles(vm: VmRecord, network: BridgeNetwork): GuestFileSpec[];
  /** The `ip=` kernel argument of a VM's static network. */
  bootArgsIp(vm: VmRecord, network: BridgeNetwork): string;
  /** Builds the work disk at `target` from the image's seed (or empty), grown to `sizeMib`, with banger's files. */
  prepareWorkDisk(args: { target: string; seedPath?: string; sizeMib: number; signal: AbortSignal }): Promise<void>;
  growWorkDisk(path: string, sizeMib: number, signal: AbortSignal): Promise<void>;
  /** Resolves when the guest's SSH answers. */
  waitForSsh(ip: string, timeoutMs: number, signal: AbortSignal): Promise<void>;
}

export interface CreateVmRequest {
  readonly name: string;
  readonly image: string;
  readonly kernel: string;
  readonly vcpu: number;
  readonly memoryMib: number;
  readonly workDiskMib: number;
  readonly nat: boolean;
  readonly skipSshWait: boolean;
  readonly sshTimeoutMs: number | undefined;
}

export interface VmService {
  create(req: CreateVmRequest, scope: CallScope): Promise<OperationRecord>;
  start(name: string, options: { sshTimeoutMs: number | undefined; skipSshWait: boolean }): Promise<OperationRecord>;
  stop(name: string, options: { timeoutMs: number | undefined; force: boolean }): Promise<OperationRecord>;
  restart(
    name: string,
    options: { timeoutMs: number | undefined; force: boolean; skipSshWait: boolean },
  ): Promise<OperationRecord>;
  /** Idempotent; a missing VM gives `existed: false` and an operation with nothing to do. */
  delete(name: string): Promise<{ existed: boolean; operation: OperationRecord }>;
  set(
    name: string,
    change: { vcpu?: number; memoryMib?: number; workDiskMib?: number; nat?: boolean },
  ): Promise<VmView>;
  list(): Promise<VmView[]>;
  get(name: string): Promise<VmView>;
  /**
   * Turns a stopped VM's disks into image `imageName` (root disk → root
   * filesystem, work disk → work seed); an operation whose result is the
   * Image. Errors: VM_NOT_FOUND, VM_RUNNING, IMAGE_NAME_TAKEN.
   */
  promote(vmName: string, imageName: string): Promise<OperationRecord>;
  /** A VM's console or VMM log: the tail, then (follow) what comes, until `signal` or the VM's deletion. */
  logs(
    name: string,
    options: { source: "console" | "vmm"; tailLines: number; follow: boolean; signal: AbortSignal },
  ): Promise<AsyncIterable<Buffer>>;
  /** Resource use of a running VM over the next second. Errors: VM_NOT_RUNNING. */
  stats(name: string): Promise<VmUsage & { uptimeMs: number }>;
  /** How to reach a running VM with the system ssh. Errors: VM_NOT_RUNNING. */
  sshTarget(name: string): Promise<SshTarget>;
  /** Where Exec connects for a running VM. Errors: VM_NOT_RUNNING. */
  guestTarget(name: string): Promise<GuestTarget>;
  /** At start-up: VMs whose VMM died while the orchestrator was away are cleaned and marked stopped. */
  recover(): Promise<void>;
  /** Resolves when the warm tap pool is not being topped up (tests). */
  poolSettled(): Promise<void>;
}

/** What is true on the host for a running VM; kept in memory and in handles.json. */
interface Handles {
  readonly pid: number;
  readonly startTime: string;
  readonly controlSocket: string;
  readonly logPath: string;
  readonly consolePath: string;
  readonly tap: string;
  readonly nat: boolean;
  readonly ready: boolean;
  /** Whether the guest runs banger's guest kit (its kernel's initrd has it): an agent to wait for and ask. */
  readonly agent?: boolean;
  /** dm-snapshot VMs: the root device and the loop devices under it (image, COW), released at stop. */
  readonly root?: RootAttachment;
}

/** A dm-snapshot root device and the loops it stands on. */
interface RootAttachment {
  readonly device: string;
  readonly loops: readonly { readonly device: string; readonly backingFile: string }[];
}

const VM_NAME = /^[a-z0-9][a-z0-9-]{0,31}$/;
const DEFAULT_SSH_TIMEOUT_MS = 60_000;
/** How often a stop asks the helper whether the VMM has exited. */
const EXIT_POLL_MS = 100;
const DEFAULT_STOP_TIMEOUT_MS = 30_000;
/** How long a stop gives the guest after the agent's power-off (within the stop's timeout) before the power button. */
const AGENT_STOP_MS = 10_000;
/** How long list and show wait for an agent's answer. */
const AGENT_HEALTH_MS = 1_000;
/** The kit's power-off, run through the agent when guest-shutdown cannot (no /sbin/shutdown in the image). */
const KIT_POWEROFF = ["/run/banger/busybox", ["sh", "/run/banger/kit/poweroff"]] as const;
/** How long a VMM gets to exit after SIGTERM before SIGKILL. */
const TERM_GRACE_MS = 3_000;
const ROOT_DISK = "root.ext4";
/** dm-snapshot VMs: the snapshot's copy-on-write store. */
const ROOT_COW = "root.cow";
/** Room in the COW store beyond the image's size, for the snapshot's own metadata. */
const COW_SLACK_BYTES = 64 * 1024 * 1024;
const WORK_DISK = "work.ext4";
const HANDLES = "handles.json";
/** Present while a create runs: a VM that has it at start-up was cut off mid-create. */
const CREATING = "creating";

export function validVmName(name: string): string {
  if (!VM_NAME.test(name)) {
    throw new InvalidArgumentError(`VM name must match ${VM_NAME.source}, got ${JSON.stringify(name)}`, {
      reason: "INVALID_VM_NAME",
    });
  }
  return name;
}

function inRange(value: number, low: number, high: number, what: string, reason: string): number {
  if (!Number.isInteger(value) || value < low || value > high) {
    throw new InvalidArgumentError(`${what} must be between ${low} and ${high}, got ${value}`, { reason });
  }
  return value;
}

export function createVmService(deps: {
  readonly db: Kysely<Database>;
  readonly logger: Logger;
  readonly operations: Operations;
  readonly stateDir: string;
  readonly config: BangerConfig;
  readonly images: ImageCatalog;
  readonly kernels: KernelCatalog;
  readonly host: HostPort;
  readonly firecracker: (socketPath: string) => FirecrackerApi;
  readonly qmp: (socketPath: string) => QmpApi;
  readonly guest: GuestPort;
  /** banger's runtime directory: VMM logs are in `<runtimeDir>/vms/<id>/`. */
  readonly runtimeDir: string;
  /** The guests' private key (made on first use) and banger's known_hosts. */
  readonly ssh: { readonly identityFile: () => Promise<string>; readonly knownHostsFile: string };
  /** Host features (NAT, DNS, the work disk, …) whose hooks run at fixed points of a VM's life. */
  readonly capabilities?: readonly Capability[];
  readonly now?: () => Date;
}): VmService {
  const { db, logger, operations, host, guest, config } = deps;
  // The work disk is this module's own; the composition root adds the rest (NAT, DNS, …).
  const capabilities = orderCapabilities([
    workDiskCapability((vm, sizeMib) =>
      guest.growWorkDisk(join(vmDir(vm.id), WORK_DISK), sizeMib, AbortSignal.timeout(120_000)),
    ),
    ...(deps.capabilities ?? []),
  ]);
  /** Runs `hook` of every capability in dependency order (reverse for cleanups). */
  const eachCapability = async (reverse: boolean, hook: (capability: Capability) => Promise<void> | undefined) => {
    for (const capability of reverse ? [...capabilities].reverse() : capabilities) await hook(capability);
  };
  const drivers: Record<VmmDriver["kind"], VmmDriver> = {
    firecracker: firecrackerDriver(host, deps.firecracker),
    "qemu-microvm": qemuDriver(host, deps.qmp, async (scope) => (await host.features(scope)).kvm),
  };
  /** The host's root-disk strategy, asked of the helper once per run (a failure is retried by the next create). */
  let strategy: Promise<RootDiskStrategy> | undefined;
  const rootDiskStrategy = (scope: CallScope) =>
    (strategy ??= host
      .features(scope)
      .then((features) => chooseRootDiskStrategy(features).value)
      .catch((error: unknown) => {
        strategy = undefined;
        throw error;
      }));
  /** The VMM of a new VM: the configured one, or for "auto" this host's choice (asked once per run, as above). */
  let autoVmm: Promise<VmmDriverName> | undefined;
  const vmmOfNewVm = (scope: CallScope): Promise<VmmDriverName> =>
    config.vmm !== "auto"
      ? Promise.resolve(config.vmm)
      : (autoVmm ??= host
          .features(scope)
          .then(async (features) => {
            const binaries = features.vmmBinaries ?? {
              firecracker: config.firecracker.binary,
              qemu: config.qemu.binary,
            };
            const choice = chooseVmm("auto", features, await vmmBinariesPresent(binaries));
            logger.info({ vmm: choice.value, why: choice.why }, "vmm = auto: new VMs use " + choice.value);
            return choice.value;
          })
          .catch((error: unknown) => {
            autoVmm = undefined;
            throw error;
          }));
  const now = deps.now ?? (() => new Date());
  const network = parseBridgeAddress(config.network.address);
  const bridge = config.network.bridge;
  const vmDir = (id: string) => join(deps.stateDir, "vms", id);
  /** A VM's logs in its runtime directory (the guest console, the VMM's own log). */
  const vmLogs = (id: string) => ({
    console: join(deps.runtimeDir, "vms", id, "console.log"),
    vmmLog: join(deps.runtimeDir, "vms", id, "vmm.log"),
  });
  /**
   * Removes a VM's runtime directory (VMM sockets and logs) through the helper, as `<runtime>/vms` is root's.
   * A VMM just killed may take a moment to be gone: VMM_RUNNING is retried for up to 3 s.
   */
  const removeRunDir = async (id: string, scope: CallScope): Promise<void> => {
    for (let attempt = 0; ; attempt++) {
      try {
        await host.removeVmmFiles(id, scope);
        return;
      } catch (error) {
        if (!(error instanceof FailedPreconditionError) || error.reason !== "VMM_RUNNING" || attempt >= 30) throw error;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  };
  const underReservation = createSerialLock();
  const lifecycleLocks = new Map<string, <T>(work: () => Promise<T>) => Promise<T>>();
  const lifecycle = <T>(name: string, work: () => Promise<T>): Promise<T> => {
    let lock = lifecycleLocks.get(name);
    if (!lock) lifecycleLocks.set(name, (lock = createSerialLock()));
    return lock(work);
  };
  /** Running VMs' handles, by VM id. */
  const handles = new Map<string, Handles>();
  /** Creates still running, by VM name: their operation ids (delete cancels them). */
  const creating = new Map<string, string>();
  /** VMs in the middle of an action, by VM id. */
  const phases = new Map<string, VmStateName>();
  let bridgeReady: Promise<void> | undefined;
  /** Warm-pool taps ready to be taken over, so a create does not wait for a link to be made. */
  const tapPool: string[] = [];
  let refilling: Promise<void> | undefined;
  const poolSize = config.network.tapPool;
  /** Tops the warm pool up in the background (one refill at a time; failures only logged). */
  const refillTapPool = () => {
    if (refilling) return refilling;
    const run = async () => {
      try {
        while (tapPool.length < poolSize) {
          tapPool.push(await host.createPoolTap(bridge, { signal: AbortSignal.timeout(30_000) }));
        }
      } catch (error) {
        logger.warn({ err: error }, "could not top up the warm tap pool; creates make their own taps");
      }
    };
    // Cleared from a .finally, which always runs later: clearing inside run() would come before the
    // assignment when the pool is already full, and leave a settled refill in place for good.
    refilling = run().finally(() => {
      refilling = undefined;
    });
    return refilling;
  };
  const scopeOf = (op: OperationContext): CallScope => ({ signal: op.signal });

  function view(
    vm: VmRecord,
    agent: { health: AgentHealthName; version: string } = { health: "", version: "" },
  ): VmView {
    const handle = handles.get(vm.id);
    const phase = phases.get(vm.id);
    const state: VmStateName =
      phase ?? (handle ? (handle.ready ? "running" : "starting") : vm.lastError ? "failed" : "stopped");
    return { ...vm, state, pid: handle?.pid ?? 0, agentHealth: agent.health, agentVersion: agent.version };
  }

  /** One agent session at a time per VM (QEMU's port serves one client; others would queue behind it). */
  const agentLocks = new Map<string, <T>(work: () => Promise<T>) => Promise<T>>();
  function agentOf(vm: VmRecord, handle: Handles): AgentClient {
    const client = createAgentClient(drivers[vm.vmm].agent(handle.controlSocket));
    let lock = agentLocks.get(vm.id);
    if (!lock) agentLocks.set(vm.id, (lock = createSerialLock()));
    const serial = lock;
    return {
      ping: (ms) => serial(() => client.ping(ms)),
      shutdown: (answerMs, timeoutMs) => serial(() => client.shutdown(answerMs, timeoutMs)),
      exec: (path, args, ms) => serial(() => client.exec(path, args, ms)),
    };
  }

  /** The VM with its agent's health, asked now (running VMs with the kit only). */
  async function observe(vm: VmRecord): Promise<VmView> {
    const handle = handles.get(vm.id);
    if (!handle) return view(vm);
    if (!handle.agent) return view(vm, { health: "none", version: "" });
    try {
      const { version } = await agentOf(vm, handle).ping(AGENT_HEALTH_MS);
      return view(vm, { health: "ok", version });
    } catch {
      return view(vm, { health: "unreachable", version: "" });
    }
  }

  /** Polls the agent until it answers: the guest's kit is up. */
  async function waitForAgent(vm: VmRecord, handle: Handles, timeoutMs: number, signal: AbortSignal): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      signal.throwIfAborted();
      try {
        return (await agentOf(vm, handle).ping(Math.min(3_000, Math.max(500, deadline - Date.now())))).version;
      } catch (error) {
        if (Date.now() > deadline) {
          throw new FailedPreconditionError(
            `the guest agent did not answer in ${timeoutMs} ms (see 'banger vm logs ${vm.name}'): ${(error as Error).message}`,
            { reason: "AGENT_NOT_READY", cause: error },
          );
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  async function find(name: string): Promise<VmRecord> {
    const vm = await getVmByName(db, validVmName(name));
    if (!vm) throw new NotFoundError(`VM ${name} does not exist`, { reason: "VM_NOT_FOUND" });
    return vm;
  }

  async function saveHandles(vm: VmRecord, value: Handles | undefined): Promise<void> {
    if (value) {
      handles.set(vm.id, value);
      await writeFile(join(vmDir(vm.id), HANDLES), JSON.stringify(value, null, 2), { mode: 0o600 });
    } else {
      handles.delete(vm.id);
      await rm(join(vmDir(vm.id), HANDLES), { force: true });
    }
  }

  /** Runs `work` as a stage whose undo is pushed on `undo` once it succeeded. */
  async function staged<T>(
    op: OperationContext,
    undo: (() => Promise<unknown>)[],
    name: string,
    work: () => Promise<T>,
    rollback?: (value: T) => Promise<unknown>,
  ): Promise<T> {
    const value = await op.stage(name, work);
    if (rollback) undo.push(() => rollback(value));
    return value;
  }

  async function unwind(undo: (() => Promise<unknown>)[], vm: string): Promise<void> {
    for (const step of undo.reverse()) {
      try {
        await step();
      } catch (error) {
        logger.error({ vm, err: error }, "could not undo a stage; a host resource may be left behind");
      }
    }
  }

  /** A dm-snapshot VM's root device: the image's loop (read-only), the COW file's loop, the snapshot over both. */
  async function attachRoot(vm: VmRecord, scope: CallScope): Promise<RootAttachment> {
    const files = [join(deps.images.dir(vm.imageName), ROOTFS_FILE), join(vmDir(vm.id), ROOT_COW)];
    const loops: { device: string; backingFile: string }[] = [];
    try {
      for (const [index, backingFile] of files.entries()) {
        loops.push({ device: await host.attachLoop(backingFile, index === 0, scope), backingFile });
      }
      const [origin, cow] = loops as [(typeof loops)[0], (typeof loops)[0]];
      return { device: await host.createSnapshot(vm.id, origin.device, cow.device, scope), loops };
    } catch (error) {
      await detachRoot(vm, { device: "", loops }, { signal: AbortSignal.timeout(30_000) }).catch((undoError: unknown) =>
        logger.error({ vm: vm.name, err: undoError }, "could not release a half-made root device"),
      );
      throw error;
    }
  }

  /** Releases a root device: the snapshot (dm-snapshot VMs), then its loop devices. */
  async function detachRoot(vm: VmRecord, root: RootAttachment, scope: CallScope): Promise<void> {
    if (vm.rootDiskStrategy === "dm-snapshot") await host.removeSnapshot(vm.id, scope);
    for (const loop of [...root.loops].reverse()) await host.detachLoop(loop.device, loop.backingFile, scope);
  }

  /** Stages that bring a VM with disks to running: (root device) → tap → launch → configure → start → ssh → network. */
  async function boot(
    op: OperationContext,
    vm: VmRecord,
    undo: (() => Promise<unknown>)[],
    options: { skipSshWait: boolean; sshTimeoutMs: number | undefined; root?: RootAttachment },
  ): Promise<void> {
    const scope = scopeOf(op);
    const driver = drivers[vm.vmm];
    // A dm-snapshot VM's root device exists while it runs (a create hands over the one it made).
    const root =
      vm.rootDiskStrategy === "dm-snapshot"
        ? (options.root ??
          (await staged(
            op,
            undo,
            "root-disk",
            () => attachRoot(vm, scope),
            (attached) => detachRoot(vm, attached, { signal: AbortSignal.timeout(30_000) }),
          )))
        : undefined;
    // Ensured once per orchestrator run, on the first boot; a failure is retried by the next one.
    const ready = (bridgeReady ??= host
      .ensureBridge(bridge, config.network.address, scope)
      .then(async () => {
        void refillTapPool();
        await eachCapability(false, (c) => c.prepareHost?.(network));
      })
      .catch((error: unknown) => {
        bridgeReady = undefined;
        throw error;
      }));
    const tap = await staged(
      op,
      undo,
      "tap",
      async () => {
        await ready;
        const pooled = tapPool.shift();
        if (pooled === undefined) return host.createTap(vm.id, bridge, scope);
        void refillTapPool();
        try {
          const tap = await host.createTap(vm.id, bridge, scope, pooled);
          await op.track("tap", "running", `tap ${tap} from the warm pool`);
          return tap;
        } catch (error) {
          logger.warn({ err: error, tap: pooled }, "a warm-pool tap could not be taken over; making a new one");
          // One the helper will never hand over (made for another uid) goes; deleting refuses what is not a pool tap.
          if (error instanceof FailedPreconditionError && error.reason === "NOT_IN_POOL") {
            await host.deletePoolTap(pooled, scope).catch(() => undefined);
          }
          return host.createTap(vm.id, bridge, scope);
        }
      },
      () => host.deleteTap(vm.id, { signal: new AbortController().signal }),
    );
    const kernel = await getKernel(db, vm.kernelName);
    if (!kernel) throw new NotFoundError(`kernel ${vm.kernelName} does not exist`, { reason: "KERNEL_NOT_FOUND" });
    const files = kernelFiles(deps.kernels.dir(kernel.name), kernel);
    const spec: MachineSpec = {
      vmId: vm.id,
      vcpu: vm.vcpu,
      memoryMib: vm.memoryMib,
      kernelPath: files.kernel,
      initrdPath: files.initrd,
      // banger.id: banger's initramfs makes this VM its own SSH host keys instead of the image's.
      bootArgs: `${driver.kernelArgs} root=/dev/vda rw ${guest.bootArgsIp(vm, network)} banger.id=${vm.id}`,
      rootDisk: root?.device ?? join(vmDir(vm.id), ROOT_DISK),
      workDisk: join(vmDir(vm.id), WORK_DISK),
      tap,
      mac: vm.mac,
      vsockCid: vm.vsockCid,
    };
    const launched = await staged(
      op,
      undo,
      "launch-vmm",
      () => driver.launch(spec, scope),
      async (vmm) => {
        await host.signalVmm(vm.id, vmm.pid, vmm.startTime, "kill", { signal: new AbortController().signal });
        await saveHandles(vm, undefined);
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
      agent: files.kit,
      ...(root ? { root } : {}),
    };
    await saveHandles(vm, handle);
    const vmmRuns = async () => (await host.vmmState(vm.id, launched.pid, launched.startTime, scope)).running;
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
    await saveHandles(vm, { ...handle, ready: false });
    if (options.skipSshWait) {
      await op.track("wait-ssh", "running");
      await op.track("wait-ssh", "done", "skipped: not waiting for the guest");
    } else {
      // Both waits end early when the VMM exits (a guest that panics or powers off): no point waiting out the timeout.
      // banger's guest kit: the agent answers (it starts before any SSH server).
      if (handle.agent) {
        await op.stage("wait-agent", async () => {
          const version = await whileVmmRuns(
            (signal) => waitForAgent(vm, handle, options.sshTimeoutMs ?? DEFAULT_SSH_TIMEOUT_MS, signal),
            vmmRuns,
            op.signal,
          );
          await op.track("wait-agent", "running", `qemu-ga ${version} answers`);
        });
      }
      await op.stage("wait-ssh", () =>
        whileVmmRuns(
          (signal) => guest.waitForSsh(vm.guestIp, options.sshTimeoutMs ?? DEFAULT_SSH_TIMEOUT_MS, signal),
          vmmRuns,
          op.signal,
        ),
      );
    }
    // Capabilities (DNS name, NAT, …) in dependency order; a failure unwinds all of their cleanups.
    undo.push(() => eachCapability(true, (c) => c.cleanup?.(vm, { signal: AbortSignal.timeout(30_000) })));
    await op.stage("network", async () => {
      await eachCapability(false, (c) => c.postStart?.(vm, scope));
      await saveHandles(vm, { ...handle, ready: !options.skipSshWait });
    });
    await updateVm(db, vm.name, { updatedAt: now(), desiredState: "running", lastError: null, startedAt: now() });
  }

  /** Polls the helper until the VM's VMM is gone (it proves the pid is still that VMM). */
  async function waitForExit(handle: Handles, vmId: string, timeoutMs: number, scope: CallScope): Promise<void> {
    const startTime = new Date(handle.startTime);
    const deadline = Date.now() + timeoutMs;
    while ((await host.vmmState(vmId, handle.pid, startTime, scope)).running) {
      if (Date.now() > deadline || scope.signal?.aborted) {
        throw new Error(`VMM ${handle.pid} still runs after ${timeoutMs} ms`);
      }
      await new Promise((resolve) => setTimeout(resolve, EXIT_POLL_MS));
    }
  }

  /** Stops the VMM (graceful first unless `force`), then releases its tap and NAT rule. */
  async function halt(vm: VmRecord, options: { timeoutMs: number | undefined; force: boolean }, scope: CallScope) {
    const handle = handles.get(vm.id);
    if (handle) {
      const startTime = new Date(handle.startTime);
      let gone = false;
      const began = Date.now();
      const timeoutMs = options.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS;
      const left = () => Math.max(0, began + timeoutMs - Date.now());
      let how = "SIGKILL";
      if (!options.force && handle.agent) {
        // The guest powers off through its agent: guest-shutdown (the image's /sbin/shutdown), else the kit's
        // poweroff (asks PID 1 as its init expects).
        try {
          const agent = agentOf(vm, handle);
          how = "the agent's guest-shutdown";
          await agent
            .shutdown(Math.min(1_000, left()), Math.max(500, Math.min(5_000, left())))
            .catch(async (error: unknown) => {
              if (!(error instanceof FailedPreconditionError) || error.reason !== "AGENT_ERROR") throw error;
              // E.g. no /sbin/shutdown, or systemd's without logind on D-Bus (it schedules "+0" through logind).
              logger.info(
                { vm: vm.name, err: error },
                "the guest's shutdown failed; the agent runs the kit's poweroff",
              );
              how = "the agent running the kit's poweroff";
              await agent.exec(KIT_POWEROFF[0], KIT_POWEROFF[1], Math.max(500, Math.min(3_000, left())));
            });
          await waitForExit(handle, vm.id, Math.min(AGENT_STOP_MS, left()), scope);
          gone = true;
        } catch (error) {
          logger.warn({ vm: vm.name, err: error }, "the guest agent did not stop the guest; pressing the power button");
        }
      }
      if (!options.force && !gone) {
        // The guest shuts down (Ctrl-Alt-Del, the power button); then the VMM is asked to exit (SIGTERM); then it is killed.
        try {
          how = "the power button";
          await drivers[vm.vmm].requestShutdown(handle.controlSocket);
          await waitForExit(handle, vm.id, left(), scope);
          gone = true;
        } catch (error) {
          logger.warn({ vm: vm.name, err: error }, "the guest did not shut down in time; stopping the VMM");
          try {
            how = "SIGTERM to the VMM";
            await host.signalVmm(vm.id, handle.pid, startTime, "term", scope);
            await waitForExit(handle, vm.id, TERM_GRACE_MS, scope);
            gone = true;
          } catch (termError) {
            logger.warn({ vm: vm.name, err: termError }, "the VMM did not exit on SIGTERM; killing it");
          }
        }
      }
      if (!gone) {
        how = "SIGKILL to the VMM";
        await host.signalVmm(vm.id, handle.pid, startTime, "kill", scope);
      }
      logger.info({ vm: vm.name, stopped_by: how, duration_ms: Date.now() - began }, `VM stopped by ${how}`);
    }
    const current = (await getVmById(db, vm.id)) ?? vm;
    await eachCapability(true, (c) => c.cleanup?.(current, scope));
    await host.deleteTap(vm.id, scope);
    if (handle?.root) await detachRoot(vm, handle.root, scope);
    await saveHandles(vm, undefined);
  }

  const vmResult = async (name: string): Promise<JsonObject> => ({ vm: vmJson(view(await find(name))) });

  const service: VmService = {
    async create(req, _scope) {
      const name = validVmName(req.name);
      const vcpu = inRange(req.vcpu || config.vm.vcpu, 1, 32, "vcpu", "INVALID_VCPU");
      const memoryMib = inRange(req.memoryMib || config.vm.memoryMib, 128, 262144, "memory_mib", "INVALID_MEMORY");
      const imageName = req.image || config.defaultImage;
      // A local image, or a catalog name pulled (a built-in one built) in stage resolve-image.
      const local = await deps.images.get(imageName).catch((error: unknown) => {
        if (error instanceof NotFoundError && isKnownImageName(imageName)) return undefined;
        throw error instanceof NotFoundError
          ? new NotFoundError(
              `image ${imageName} is neither local nor in the catalog; pull it with 'banger image pull'`,
              {
                reason: "IMAGE_NOT_FOUND",
              },
            )
          : error;
      });
      const workDiskMib = req.workDiskMib || config.vm.workDiskMib;
      const checkWorkDisk = (workSeedBytes: number) => {
        const least = Math.max(Math.ceil(workSeedBytes / 1048576), 16);
        if (workDiskMib < least) {
          throw new InvalidArgumentError(`work_disk_mib must be at least ${least}, got ${workDiskMib}`, {
            reason: "INVALID_DISK_SIZE",
          });
        }
      };
      checkWorkDisk(local?.workSeedBytes ?? 0);
      const catalogKernel = CATALOG.find((entry) => entry.name === imageName)?.defaultKernel ?? "";
      const kernelName =
        req.kernel ||
        local?.defaultKernel ||
        catalogKernel ||
        config.defaultKernel ||
        (await getDefaultKernel(db))?.name;
      // None named and none imported at all: stage `kernel` imports the host's installed kernel.
      if (kernelName && !(await getKernel(db, kernelName))) {
        throw new NotFoundError(`kernel ${kernelName} does not exist`, { reason: "KERNEL_NOT_FOUND" });
      }
      let chosenKernel: string = kernelName ?? "";
      if (await getVmByName(db, name)) {
        throw new AlreadyExistsError(`a VM named ${name} already exists`, { reason: "VM_NAME_TAKEN" });
      }
      const nat = req.nat || config.vm.nat;
      await eachCapability(false, (c) => c.preflight?.({ vmName: name, nat, workDiskMib }));
      const operation = await operations.start("create-vm", name, (op) =>
        // The create holds the VM's lifecycle lock: start/stop/delete wait for it (delete cancels it first).
        lifecycle(name, () => createSteps(op)).finally(() => creating.delete(name)),
      );
      creating.set(name, operation.id);
      return operation;

      async function createSteps(op: OperationContext): Promise<JsonObject> {
        const undo: (() => Promise<unknown>)[] = [];
        let vm: VmRecord | undefined;
        let workDisk: Promise<void> | undefined;
        try {
          if (chosenKernel === "") {
            chosenKernel = await op.stage("kernel", async () => {
              const { kernel, imported } = await deps.kernels.ensureDefault(op);
              if (imported) await op.note("kernel", imported);
              return kernel.name;
            });
          }
          const image = await op.stage("resolve-image", async () => {
            // The default image may be stood in for by the built-in one when its registry is unreachable.
            const found =
              req.image === ""
                ? await deps.images.ensureDefault(imageName, op, "resolve-image", scopeOf(op))
                : await deps.images.ensureLocal(imageName, op, "resolve-image", scopeOf(op));
            checkWorkDisk(found.workSeedBytes);
            return found;
          });
          const id = randomBytes(6).toString("hex");
          // Registered first, and safe whatever the stage got to: its own failure may come after the row was written.
          undo.push(async () => {
            const reserved = await getVmById(db, id);
            if (reserved) await deleteVm(db, reserved.name);
            await rm(vmDir(id), { recursive: true, force: true });
          });
          vm = await op.stage("reserve", async () => {
            const strategy = await rootDiskStrategy(scopeOf(op));
            const vmmDriver = await vmmOfNewVm(scopeOf(op));
            return underReservation(async () => {
              const existing = await listVms(db);
              // The marker goes first: whatever a crash cuts off from here on is found and undone at start-up.
              // The group may traverse it: an installed helper (root without CAP_DAC_OVERRIDE, in banger's
              // group) opens the root disk in it. The service's umask would take that bit away: chmod.
              await mkdir(vmDir(id), { recursive: true, mode: 0o750 });
              await chmod(vmDir(id), 0o750);
              await writeFile(join(vmDir(id), CREATING), op.id, { mode: 0o600 });
              return insertVm(db, {
                id,
                name,
                imageName: image.name,
                kernelName: chosenKernel,
                vcpu,
                memoryMib,
                workDiskMib,
                guestIp: allocateGuestIp(network, new Set(existing.map((v) => v.guestIp))),
                mac: allocateMac(id, new Set(existing.map((v) => v.mac))),
                vsockCid: allocateVsockCid(new Set(existing.map((v) => v.vsockCid))),
                nat,
                vmm: vmmDriver,
                rootDiskStrategy: strategy,
                desiredState: "running",
                createdAt: now(),
              });
            });
          });
          const created = vm;
          phases.set(created.id, "creating");
          const dir = vmDir(created.id);
          workDisk = op.stage("work-disk", () =>
            guest.prepareWorkDisk({
              target: join(dir, WORK_DISK),
              ...(image.workSeedBytes > 0 ? { seedPath: join(deps.images.dir(image.name), WORK_SEED_FILE) } : {}),
              sizeMib: workDiskMib,
              signal: op.signal,
            }),
          );
          workDisk.catch(() => undefined); // awaited below, or before unwinding
          const rootDisk = join(dir, ROOT_DISK);
          const scopeNow = scopeOf(op);
          const root = await staged(
            op,
            undo,
            "root-disk",
            async () => {
              const imageRootfs = join(deps.images.dir(image.name), ROOTFS_FILE);
              if (created.rootDiskStrategy === "dm-snapshot") {
                // A sparse copy-on-write store as large as the image (plus room for the snapshot's metadata).
                const cow = await open(join(dir, ROOT_COW), "wx", 0o660);
                await cow.truncate(Math.ceil(((await stat(imageRootfs)).size * 1.1) / 4096) * 4096 + COW_SLACK_BYTES);
                await cow.chmod(0o660); // the helper attaches it read-write through the group
                await cow.close();
                return attachRoot(created, scopeNow);
              }
              // The owner's file: the helper opens it read-write through the group (the units give it no
              // CAP_DAC_OVERRIDE) and hands it to e2fsck and debugfs, which run as the owner.
              await copySparse(imageRootfs, rootDisk, { signal: op.signal });
              await chmod(rootDisk, 0o660);
              return { device: rootDisk, loops: [] };
            },
            (attached) => detachRoot(created, attached, { signal: new AbortController().signal }),
          );
          await op.stage("fsck", () => host.checkFilesystem(created.id, scopeNow));
          await op.stage("guest-files", async () => {
            await host.writeGuestFiles(created.id, guest.rootDiskFiles(created, network), scopeNow);
          });
          // The work disk does not depend on the root disk: it is built meanwhile.
          await workDisk;
          await boot(op, created, undo, {
            skipSshWait: req.skipSshWait,
            sshTimeoutMs: req.sshTimeoutMs,
            ...(created.rootDiskStrategy === "dm-snapshot" ? { root } : {}),
          });
          await rm(join(dir, CREATING), { force: true });
          phases.delete(created.id);
          logger.info({ vm: name, id: created.id, ip: created.guestIp }, "VM created");
          return vmResult(name);
        } catch (error) {
          if (vm) phases.set(vm.id, "deleting");
          await workDisk?.catch(() => undefined); // nothing may still be writing when the directory goes
          // What the guest and its VMM printed goes with the error (the operation keeps it): the unwind
          // removes the runtime directory with the logs.
          if (vm && !op.signal.aborted) await explainVmFailure(error, vmLogs(vm.id));
          await unwind(undo, name);
          if (vm) {
            // A helper call cut off by a cancel may have done its work without the answer arriving:
            // whatever the inventory still lists for this VM goes too.
            const scope = { signal: AbortSignal.timeout(30_000) };
            const inventory = await host.inventory(scope).catch(() => undefined);
            if (inventory) await removeHostResources(vm.id, inventory, scope);
            await removeRunDir(vm.id, scope).catch((error: unknown) =>
              logger.error({ vm: name, err: error }, "could not remove the VM's runtime directory"),
            );
          }
          if (vm) {
            phases.delete(vm.id);
            handles.delete(vm.id);
          }
          throw error;
        }
      }
    },

    async start(name, { sshTimeoutMs, skipSshWait }) {
      const vm = await find(name);
      if (handles.has(vm.id)) {
        throw new FailedPreconditionError(`VM ${name} is already running`, { reason: "VM_RUNNING" });
      }
      return operations.start("start-vm", name, (op) =>
        lifecycle(name, async () => {
          const current = await applyPending(await find(name));
          const undo: (() => Promise<unknown>)[] = [];
          phases.set(current.id, "starting");
          try {
            await boot(op, current, undo, { skipSshWait, sshTimeoutMs });
          } catch (error) {
            if (!op.signal.aborted) await explainVmFailure(error, vmLogs(current.id));
            await unwind(undo, name);
            await updateVm(db, name, { updatedAt: now(), lastError: `${(error as Error).message} (${op.id})` });
            throw error;
          } finally {
            phases.delete(current.id);
          }
          return vmResult(name);
        }),
      );
    },

    async stop(name, options) {
      const vm = await find(name);
      if (!handles.has(vm.id)) {
        throw new FailedPreconditionError(`VM ${name} is not running`, { reason: "VM_NOT_RUNNING" });
      }
      return operations.start("stop-vm", name, (op) =>
        lifecycle(name, async () => {
          phases.set(vm.id, "stopping");
          try {
            await op.stage("stop-vmm", () => halt(vm, options, scopeOf(op)));
            await updateVm(db, name, { updatedAt: now(), desiredState: "stopped" });
          } finally {
            phases.delete(vm.id);
          }
          return vmResult(name);
        }),
      );
    },

    async restart(name, options) {
      const vm = await find(name);
      return operations.start("restart-vm", name, (op) =>
        lifecycle(name, async () => {
          if (handles.has(vm.id)) {
            phases.set(vm.id, "stopping");
            await op.stage("stop-vmm", () => halt(vm, options, scopeOf(op))).finally(() => phases.delete(vm.id));
          }
          const current = await applyPending(await find(name));
          const undo: (() => Promise<unknown>)[] = [];
          phases.set(vm.id, "starting");
          try {
            await boot(op, current, undo, { skipSshWait: options.skipSshWait, sshTimeoutMs: undefined });
          } catch (error) {
            if (!op.signal.aborted) await explainVmFailure(error, vmLogs(current.id));
            await unwind(undo, name);
            throw error;
          } finally {
            phases.delete(vm.id);
          }
          return vmResult(name);
        }),
      );
    },

    async delete(name) {
      validVmName(name);
      // A create still running for it is cancelled; it unwinds what it made, then this runs.
      const runningCreate = creating.get(name);
      if (runningCreate) await operations.cancel(runningCreate);
      const found = await getVmByName(db, name);
      // Deleting what is not there succeeds: an operation with nothing to do.
      if (!found && !runningCreate)
        return { existed: false, operation: await operations.start("delete-vm", name, () => Promise.resolve(null)) };
      const operation = await operations.start("delete-vm", name, (op) =>
        lifecycle(name, async () => {
          const vm = await getVmByName(db, name);
          if (!vm) return null; // the cancelled create took it all away
          phases.set(vm.id, "deleting");
          try {
            await op.stage("stop-vmm", () => halt(vm, { timeoutMs: 5_000, force: false }, scopeOf(op)));
            await op.stage("remove-files", async () => {
              await deleteVm(db, name);
              await rm(vmDir(vm.id), { recursive: true, force: true });
              await removeRunDir(vm.id, scopeOf(op));
              await forgetHostKey(deps.ssh.knownHostsFile, name);
            });
          } finally {
            phases.delete(vm.id);
          }
          logger.info({ vm: name, id: vm.id }, "VM deleted");
          return null;
        }),
      );
      return { existed: true, operation };
    },

    async set(name, change) {
      const vm = await find(name);
      const set = Object.entries(change).filter(([, value]) => value !== undefined);
      if (set.length === 0) {
        throw new InvalidArgumentError("nothing to change: give vcpu, memory_mib, work_disk_mib or nat", {
          reason: "NOTHING_TO_CHANGE",
        });
      }
      return lifecycle(name, async () => {
        const running = handles.has(vm.id);
        const pending: Record<string, number> = { ...(vm.pendingChanges as Record<string, number>) };
        const patch: { vcpu?: number; memoryMib?: number; workDiskMib?: number; nat?: boolean } = {};
        if (change.vcpu !== undefined) {
          const vcpu = inRange(change.vcpu, 1, 32, "vcpu", "INVALID_VCPU");
          if (running) pending["vcpu"] = vcpu;
          else patch.vcpu = vcpu;
        }
        if (change.memoryMib !== undefined) {
          const memory = inRange(change.memoryMib, 128, 262144, "memory_mib", "INVALID_MEMORY");
          if (running) pending["memory_mib"] = memory;
          else patch.memoryMib = memory;
        }
        if (change.workDiskMib !== undefined) {
          if (change.workDiskMib < vm.workDiskMib) {
            throw new InvalidArgumentError(
              `the work disk can only grow: ${change.workDiskMib} MiB < ${vm.workDiskMib} MiB`,
              { reason: "DISK_SHRINK" },
            );
          }
          if (running) pending["work_disk_mib"] = change.workDiskMib;
          else patch.workDiskMib = change.workDiskMib;
        }
        if (change.nat !== undefined && change.nat !== vm.nat) patch.nat = change.nat;
        const scope = { signal: AbortSignal.timeout(60_000) };
        await eachCapability(false, (c) => c.applyConfigChange?.(vm, { ...patch }, running, scope));
        const updated = await updateVm(db, name, { updatedAt: now(), ...patch, pendingChanges: pending });
        return view(updated);
      });
    },

    async list() {
      return Promise.all((await listVms(db)).map(observe));
    },

    async get(name) {
      return observe(await find(name));
    },

    poolSettled: async () => {
      await refilling;
    },

    async logs(name, options) {
      const vm = await find(name);
      const file = options.source === "vmm" ? "vmm.log" : "console.log";
      return readLog(join(deps.runtimeDir, "vms", vm.id, file), {
        tailLines: options.tailLines,
        follow: options.follow,
        signal: options.signal,
        stillThere: async () => (await getVmById(db, vm.id)) !== undefined,
      });
    },

    async stats(name) {
      const vm = await find(name);
      const handle = handles.get(vm.id);
      if (!handle) throw new FailedPreconditionError(`VM ${name} is not running`, { reason: "VM_NOT_RUNNING" });
      const startTime = new Date(handle.startTime);
      const scope = { signal: AbortSignal.timeout(10_000) };
      const usage = await measureVm(() => host.vmmState(vm.id, handle.pid, startTime, scope), {
        root: join(vmDir(vm.id), ROOT_DISK),
        work: join(vmDir(vm.id), WORK_DISK),
      });
      return { ...usage, uptimeMs: vm.startedAt ? Date.now() - vm.startedAt.getTime() : 0 };
    },

    async guestTarget(name) {
      const target = await service.sshTarget(name);
      return {
        host: target.host,
        port: target.port,
        hostKeyAlias: target.hostKeyAlias,
        privateKey: await readFile(target.identityFile),
        knownHostsFile: target.knownHostsFile,
      };
    },

    async sshTarget(name) {
      const vm = await find(name);
      if (!handles.has(vm.id)) {
        throw new FailedPreconditionError(`VM ${name} is not running`, { reason: "VM_NOT_RUNNING" });
      }
      return sshTarget(vm, await deps.ssh.identityFile(), deps.ssh.knownHostsFile);
    },

    async promote(vmName, imageName) {
      const vm = await find(vmName);
      const name = validImageName(imageName);
      const refuseRunning = () => {
        if (handles.has(vm.id)) {
          throw new FailedPreconditionError(`VM ${vmName} is running: stop it before promoting its disks`, {
            reason: "VM_RUNNING",
          });
        }
      };
      refuseRunning();
      if (vm.rootDiskStrategy === "dm-snapshot") {
        throw new FailedPreconditionError(
          `VM ${vmName}'s root disk is a dm-snapshot over image ${vm.imageName}: promoting it is not supported yet`,
          { reason: "PROMOTE_UNSUPPORTED" },
        );
      }
      if (await getImage(db, name)) {
        throw new AlreadyExistsError(`image ${name} already exists`, { reason: "IMAGE_NAME_TAKEN" });
      }
      return operations.start("promote-image", name, (op) =>
        // Under the VM's lifecycle lock: it cannot start while its disks are copied.
        lifecycle(vmName, async () => {
          refuseRunning();
          const image = await op.stage("publish", () =>
            deps.images.adopt({
              name,
              rootfsPath: join(vmDir(vm.id), ROOT_DISK),
              workSeedPath: join(vmDir(vm.id), WORK_DISK),
              defaultKernel: vm.kernelName,
              source: "promoted",
              signal: op.signal,
            }),
          );
          logger.info({ image: name, vm: vmName }, "VM promoted to an image");
          return { image: imageJson(image) };
        }),
      );
    },

    async recover() {
      const scope = { signal: AbortSignal.timeout(30_000) };
      let inventory: HostInventory | undefined;
      try {
        inventory = await host.inventory(scope);
      } catch (error) {
        logger.warn(
          { err: error },
          "the privileged helper did not answer: host leftovers are checked at the next start",
        );
      }
      const rows = await listVms(db);
      const known = new Set(rows.map((vm) => vm.id));
      for (const vm of rows) {
        const dir = vmDir(vm.id);
        if (existsSync(join(dir, CREATING))) {
          // A create cut off by the restart (its operation is INTERRUPTED): undo all of it.
          if (inventory) await removeHostResources(vm.id, inventory, scope);
          await rm(dir, { recursive: true, force: true });
          await removeRunDir(vm.id, scope).catch(() => undefined);
          await deleteVm(db, vm.name);
          logger.warn({ vm: vm.name, id: vm.id }, "removed a VM whose create a restart cut off");
          continue;
        }
        let stored: Handles | undefined;
        try {
          stored = JSON.parse(await readFile(join(dir, HANDLES), "utf8")) as Handles;
        } catch {
          stored = undefined;
        }
        if (!stored) continue;
        const pid = stored.pid;
        // Without the helper's inventory only "some process has that pid" can be known (bangerd's unit
        // cannot read the VMM's /proc): keep the VM rather than lose a running one; the helper proves it later.
        const alive = inventory
          ? inventory.vmms.some((vmm) => vmm.vmId === vm.id && vmm.pid === pid)
          : processIsAlive(pid);
        if (alive) {
          handles.set(vm.id, stored);
          // Its DNS name, NAT rule, … are put back (postStart hooks are idempotent).
          await eachCapability(false, (c) => c.postStart?.(vm, scope)).catch((error: unknown) =>
            logger.warn({ vm: vm.name, err: error }, "could not restore a running VM's host features"),
          );
          logger.info({ vm: vm.name, pid }, "VM still running: kept");
          continue;
        }
        if (inventory) await removeHostResources(vm.id, inventory, scope);
        // A dm-snapshot VM's image loop is backed by the image's file, not one of the VM's: its handles name it.
        for (const loop of (inventory ? stored.root?.loops : undefined) ?? []) {
          if (!inventory?.loops.some((l) => l.device === loop.device && l.backingFile === loop.backingFile)) continue;
          await host
            .detachLoop(loop.device, loop.backingFile, scope)
            .catch((error: unknown) => logger.error({ vm: vm.name, err: error }, "could not remove a loop device"));
        }
        await rm(join(dir, HANDLES), { force: true });
        await updateVm(db, vm.name, { updatedAt: now(), desiredState: "stopped" });
        logger.warn({ vm: vm.name, pid }, "VM's VMM died while the orchestrator was away: cleaned up, marked stopped");
      }
      // Directories of VMs that have no row (a create cut off before its row was written).
      const dirs = existsSync(join(deps.stateDir, "vms")) ? await readdir(join(deps.stateDir, "vms")) : [];
      for (const id of dirs.filter((entry) => !known.has(entry))) {
        await rm(vmDir(id), { recursive: true, force: true });
        logger.warn({ id }, "removed the directory of a VM that does not exist");
      }
      if (!inventory) return;
      // Warm-pool taps made for this owner are taken into the pool; one made for another uid (an earlier
      // owner's) cannot be opened by this owner's VMMs: it is deleted, and the pool makes new ones.
      for (const tap of inventory.poolTaps) {
        if (inventory.ownerUid === undefined || tap.ownerUid === inventory.ownerUid) {
          if (!tapPool.includes(tap.name)) tapPool.push(tap.name);
          continue;
        }
        await host
          .deletePoolTap(tap.name, scope)
          .then(() =>
            logger.warn(
              { tap: tap.name, tap_owner: tap.ownerUid, owner: inventory.ownerUid },
              "deleted a warm-pool tap made for another uid than the helper's owner",
            ),
          )
          .catch((error: unknown) => logger.error({ tap: tap.name, err: error }, "could not delete a warm-pool tap"));
      }
      // banger's resources that belong to no VM at all.
      const orphans = new Set<string>([
        ...inventory.taps.map((t) => t.vmId),
        ...inventory.natRules.map((r) => r.vmId),
        ...inventory.vmms.map((v) => v.vmId),
        ...inventory.loops.map((l) => vmIdOfPath(l.backingFile)).filter((id): id is string => id !== undefined),
      ]);
      for (const id of orphans) {
        if (known.has(id)) continue;
        await removeHostResources(id, inventory, scope);
        await rm(vmDir(id), { recursive: true, force: true });
        logger.warn({ id }, "removed host resources left by a VM that no longer exists");
      }
      // Their runtime directories (VMM sockets and logs), once their VMMs are gone: those of the state
      // directories just removed and of the orphans (`<runtime>/vms` is root's: the owner cannot list it).
      for (const id of new Set([...dirs, ...orphans].filter((entry) => !known.has(entry)))) {
        await removeRunDir(id, scope).catch((error: unknown) =>
          logger.error({ id, err: error }, "could not remove a runtime directory"),
        );
      }
      // Image loops under no running VM's root device (a dm-snapshot create or stop cut off).
      const inUse = new Set([...handles.values()].flatMap((h) => h.root?.loops.map((l) => l.device) ?? []));
      for (const loop of inventory.loops) {
        if (inUse.has(loop.device) || vmIdOfPath(loop.backingFile) !== undefined) continue;
        if (!loop.backingFile.startsWith(`${join(deps.stateDir, "images")}/`)) continue; // images.ts keeps them there
        await host
          .detachLoop(loop.device, loop.backingFile, scope)
          .then(() => logger.warn({ device: loop.device }, "removed an image's loop device that no VM uses"))
          .catch((error: unknown) => logger.error({ err: error }, "could not remove a loop device"));
      }
    },
  };

  /** The VM id of a file under `<state>/vms/<id>/`, if it is one. */
  function vmIdOfPath(path: string): string | undefined {
    const root = `${join(deps.stateDir, "vms")}/`;
    return path.startsWith(root) ? path.slice(root.length).split("/")[0] : undefined;
  }

  /** Everything the inventory lists for VM `id`: its VMM, tap, NAT rule and loop devices. Best effort, logged. */
  async function removeHostResources(id: string, inventory: HostInventory, scope: CallScope): Promise<void> {
    const attempt = async (what: string, work: () => Promise<unknown>) => {
      try {
        await work();
      } catch (error) {
        logger.error({ id, err: error }, `could not remove ${what}`);
      }
    };
    for (const vmm of inventory.vmms.filter((v) => v.vmId === id)) {
      await attempt("a VMM", () => host.signalVmm(id, vmm.pid, vmm.startTime, "kill", scope));
    }
    if (inventory.taps.some((t) => t.vmId === id)) await attempt("a tap", () => host.deleteTap(id, scope));
    if (inventory.natRules.some((r) => r.vmId === id)) await attempt("a NAT rule", () => host.disableNat(id, scope));
    if (inventory.snapshots.some((s) => s.vmId === id)) {
      await attempt("a dm-snapshot", () => host.removeSnapshot(id, scope));
    }
    for (const loop of inventory.loops.filter((l) => vmIdOfPath(l.backingFile) === id)) {
      await attempt("a loop device", () => host.detachLoop(loop.device, loop.backingFile, scope));
    }
  }

  /** Pending SetVm changes become the VM's settings (it is stopped now). */
  async function applyPending(vm: VmRecord): Promise<VmRecord> {
    const pending = vm.pendingChanges as Record<string, number>;
    if (Object.keys(pending).length === 0) return vm;
    if (pending["work_disk_mib"] !== undefined) {
      await guest.growWorkDisk(join(vmDir(vm.id), WORK_DISK), pending["work_disk_mib"], new AbortController().signal);
    }
    return updateVm(db, vm.name, {
      updatedAt: now(),
      ...(pending["vcpu"] !== undefined ? { vcpu: pending["vcpu"] } : {}),
      ...(pending["memory_mib"] !== undefined ? { memoryMib: pending["memory_mib"] } : {}),
      ...(pending["work_disk_mib"] !== undefined ? { workDiskMib: pending["work_disk_mib"] } : {}),
      pendingChanges: {},
    });
  }

  return service;
}

/** The operation result and rpc shape: the Vm in proto JSON form. */
export function vmJson(vm: VmView): JsonObject {
  return {
    name: vm.name,
    id: vm.id,
    image: vm.imageName,
    kernel: vm.kernelName,
    state: `VM_STATE_${vm.state.toUpperCase()}`,
    vcpu: vm.vcpu,
    memoryMib: vm.memoryMib,
    workDiskMib: String(vm.workDiskMib),
    guestIp: vm.guestIp,
    mac: vm.mac,
    vsockCid: vm.vsockCid,
    nat: vm.nat,
    vmm: vm.vmm === "firecracker" ? "VMM_KIND_FIRECRACKER" : "VMM_KIND_QEMU_MICROVM",
    rootDiskStrategy: vm.rootDiskStrategy === "clone" ? "ROOT_DISK_STRATEGY_CLONE" : "ROOT_DISK_STRATEGY_DM_SNAPSHOT",
    pid: vm.pid,
    createTime: vm.createdAt.toISOString(),
    ...(vm.startedAt ? { startTime: vm.startedAt.toISOString() } : {}),
    lastError: vm.lastError ?? "",
    pendingChanges: Object.entries(vm.pendingChanges).map(([key, value]) => `${key}=${JSON.stringify(value)}`),
    ...(vm.agentHealth === "" ? {} : { agentHealth: `AGENT_HEALTH_${vm.agentHealth.toUpperCase()}` }),
    ...(vm.agentVersion === "" ? {} : { agentVersion: vm.agentVersion }),
  };
}
