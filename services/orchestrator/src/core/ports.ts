/**
 * The orchestrator's ports, in one place: every host effect and peer that
 * core reaches goes through one of these interfaces, and the composition root
 * (app.ts) builds the adapters and passes them in; core never constructs one.
 *
 * | port          | adapter                                   | used by                 |
 * |---------------|-------------------------------------------|-------------------------|
 * | HostPort      | peers/privileged.ts (the privileged helper) | vm/, capabilities, doctor |
 * | PullerPort    | peers/puller.ts (the image puller)        | images.ts               |
 * | GuestPort     | guest/port.ts (disk builders, SSH probe)  | vm/                     |
 * | VmmDriver     | vmm/drivers.ts (Firecracker, QEMU)        | vm/                     |
 * | AgentClient   | vmm/agent-client.ts (qemu-ga over a socket) | vm/                   |
 * | DoctorProbes  | host/doctor-probes.ts                     | doctor.ts               |
 *
 * Unit tests pass scripted ones.
 */
import type { Socket } from "node:net";
import type { ServiceIdentity } from "@banger/common";
import type { VmmDriver as VmmKind } from "../config/index.js";
import type { ImageConfig, VmRecord } from "../store/index.js";
import type { CallScope } from "./call-scope.js";
import type { BridgeNetwork } from "./vm-addresses.js";

// ---- The privileged helper ----------------------------------------------------------------------
// What the VM lifecycle needs from the privileged helper, in plain types. The helper derives every
// name and path from the VM id itself; this port only states intents.

export interface LaunchedVmm {
  readonly pid: number;
  /** Identifies the process together with the pid (SignalVmm proves both). */
  readonly startTime: Date;
  /** Firecracker's API socket, or QEMU's QMP socket. */
  readonly controlSocket: string;
  readonly logPath: string;
  readonly consolePath: string;
}

/** What banger has on the host now, as the helper's inventory lists it. */
export interface HostInventory {
  /** VM taps (warm-pool taps and the bridge are left out). */
  readonly taps: readonly { readonly name: string; readonly vmId: string }[];
  /** Warm-pool taps, with the uid each was made for (its tun owner): only the helper's owner's can serve a VM. */
  readonly poolTaps: readonly { readonly name: string; readonly ownerUid: number }[];
  /** The helper's owner (the uid VMMs run as); undefined when the helper did not say. */
  readonly ownerUid?: number | undefined;
  readonly natRules: readonly { readonly vmId: string }[];
  readonly loops: readonly { readonly device: string; readonly backingFile: string }[];
  /** VMs' dm-snapshots (`bgr-<vm_id>-root`). */
  readonly snapshots: readonly { readonly vmId: string }[];
  readonly vmms: readonly { readonly vmId: string; readonly pid: number; readonly startTime: Date }[];
}

/** Host features the helper probed (read-only; see privileged HostFeatures). */
export interface HostFeatures {
  readonly tun: boolean;
  readonly bridge: boolean;
  readonly nftables: boolean;
  readonly loop: boolean;
  readonly deviceMapper: boolean;
  /** Why device-mapper is not usable (e.g. a node without its driver); empty or absent when it is. */
  readonly deviceMapperDetail?: string;
  readonly resolved: boolean;
  readonly kvm: boolean;
  /** Why KVM is not usable (e.g. /dev/kvm without a driver); empty or absent when it is. */
  readonly kvmDetail?: string;
  readonly kernelRelease: string;
  /** net.ipv4.ip_forward where the helper runs (the host's network namespace); undefined when unreadable. */
  readonly ipForward?: boolean | undefined;
  /** Whether the helper sees the kernel's modules: `bridge = false` is then certain. */
  readonly modulesVisible?: boolean;
  /** The VMM binaries the helper launches (its configuration, not bangerd's). */
  readonly vmmBinaries?: { readonly firecracker: string; readonly qemu: string };
  /** The helper's owner: the only uid it answers, and the one VMMs run as (never root: then no VM starts). */
  readonly ownerUid?: number;
}

export interface VmmState {
  readonly running: boolean;
  readonly cpuTimeMs: number;
  readonly rssBytes: number;
}

export interface HostPort {
  inventory(scope: CallScope): Promise<HostInventory>;
  /** What the host can do, as the helper sees it (probed at each call). */
  features(scope: CallScope): Promise<HostFeatures>;
  ensureBridge(name: string, address: string, scope: CallScope): Promise<void>;
  /**
   * Returns the tap's name; `fromPool` takes that warm-pool tap over instead of making one. `guestAddress`:
   * the bridge's neighbour entry for the VM's address (a previous holder's MAC) is forgotten too.
   */
  createTap(
    vmId: string,
    bridge: string,
    scope: CallScope,
    options?: { readonly fromPool?: string; readonly guestAddress?: string },
  ): Promise<string>;
  /** Makes a warm-pool tap on the bridge; returns its name. */
  createPoolTap(bridge: string, scope: CallScope): Promise<string>;
  deletePoolTap(name: string, scope: CallScope): Promise<void>;
  deleteTap(vmId: string, scope: CallScope): Promise<void>;
  enableNat(vmId: string, guestAddress: string, bridge: string, scope: CallScope): Promise<void>;
  /** Routes `.vm` to banger's DNS responder on the bridge through systemd-resolved (RESOLVED_ABSENT where it does not run). */
  configureResolver(bridge: string, dnsAddress: string, scope: CallScope): Promise<void>;
  disableNat(vmId: string, scope: CallScope): Promise<void>;
  /** Returns the loop device. */
  attachLoop(path: string, readOnly: boolean, scope: CallScope): Promise<string>;
  detachLoop(device: string, path: string, scope: CallScope): Promise<void>;
  /** `e2fsck -fy` on the VM's root device; returns e2fsck's exit code (0 or 1). */
  checkFilesystem(vmId: string, scope: CallScope): Promise<number>;
  writeGuestFiles(vmId: string, files: readonly GuestFileSpec[], scope: CallScope): Promise<void>;
  launchFirecracker(vmId: string, scope: CallScope): Promise<LaunchedVmm>;
  /** Starts QEMU (`-M microvm`) with the whole machine on its command line; it runs at once. */
  launchQemu(vmId: string, machine: QemuMachine, scope: CallScope): Promise<LaunchedVmm>;
  /** A dm-snapshot of the image's loop device with the VM's COW loop device; returns the device node. */
  createSnapshot(vmId: string, originDevice: string, cowDevice: string, scope: CallScope): Promise<string>;
  /** Returns whether it existed. */
  removeSnapshot(vmId: string, scope: CallScope): Promise<boolean>;
  /** Removes the VM's runtime directory (sockets, logs) once its VMM is gone (VMM_RUNNING before); returns whether it existed. */
  removeVmmFiles(vmId: string, scope: CallScope): Promise<boolean>;
  /** Returns whether the process still existed. */
  signalVmm(vmId: string, pid: number, startTime: Date, signal: "term" | "kill", scope: CallScope): Promise<boolean>;
  /** Whether the VM's VMM (that pid, started then) still runs, and its CPU time and memory: the helper's view. */
  vmmState(vmId: string, pid: number, startTime: Date, scope: CallScope): Promise<VmmState>;
}

/** The machine QEMU is started with (privileged vmm.proto `QemuMachine`). */
export interface QemuMachine {
  readonly vcpu: number;
  readonly memoryMib: number;
  readonly kernelPath: string;
  /** "" = none. */
  readonly initrdPath: string;
  readonly bootArgs: string;
  /** The VM's dm device or its clone root disk file. */
  readonly rootDisk: string;
  readonly workDisk: string;
  readonly mac: string;
  /** KVM when true, else TCG (the helper appends the host's tsc_early_khz). */
  readonly kvm: boolean;
  /** Wait for a saved state (`-incoming defer`) instead of booting. */
  readonly incoming?: boolean;
}

/** A file banger writes into a guest's root filesystem. */
export interface GuestFileSpec {
  readonly path: string;
  readonly content: Uint8Array;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
}

// ---- Guests -------------------------------------------------------------------------------------

/** What the lifecycle needs to build disks and reach guests; the guest/ module and ssh provide them. */
export interface GuestPort {
  /** Files banger writes into the root filesystem (hostname, network, resolver). */
  rootDiskFiles(vm: VmRecord, network: BridgeNetwork): GuestFileSpec[];
  /** The `ip=` kernel argument of a VM's static network. */
  bootArgsIp(vm: VmRecord, network: BridgeNetwork): string;
  /** Builds the work disk at `target` from the image's seed (or empty), grown to `sizeMib`, with banger's files. */
  prepareWorkDisk(args: { target: string; seedPath?: string; sizeMib: number; signal: AbortSignal }): Promise<void>;
  growWorkDisk(path: string, sizeMib: number, signal: AbortSignal): Promise<void>;
  /** Writes banger's files (SSH key, git identity, file_sync) onto a stopped VM's work disk again, as configured now. */
  refreshWorkDisk(path: string, signal: AbortSignal): Promise<void>;
  /**
   * The identity (device, inode, size, times) of the published image file `rootfs` as it is now, when
   * `e2fsck -fn` found the file as it is now clean (asked once per identity); else undefined. A copy
   * made while the identity stayed the same needs no check of its own (guest/clean-image.ts).
   */
  cleanRootfs(rootfs: string): Promise<string | undefined>;
  /** Resolves when the guest's SSH answers. */
  waitForSsh(ip: string, timeoutMs: number, signal: AbortSignal): Promise<void>;
}

// ---- VMMs and the guest agent -------------------------------------------------------------------

/** Everything a VM boots with, whatever the VMM. */
export interface MachineSpec {
  readonly vmId: string;
  readonly vcpu: number;
  readonly memoryMib: number;
  readonly kernelPath: string;
  /** null = none. */
  readonly initrdPath: string | null;
  readonly bootArgs: string;
  /** A file or block device (dm-snapshot). */
  readonly rootDisk: string;
  readonly workDisk: string;
  readonly tap: string;
  readonly mac: string;
  readonly vsockCid: number;
  /** Launch to take a saved state (QEMU: `-incoming defer`), not to boot the kernel. */
  readonly incoming?: boolean;
}

/** A snapshot's copies of its VM's disks. */
export interface SnapshotDisks {
  readonly rootDisk: string;
  readonly workDisk: string;
}

/** What a fork's VMM uses in place of what its snapshot names: its own tap and disks. */
export interface ForkDevices extends SnapshotDisks {
  readonly tap: string;
}

/** Opens a byte stream to a guest's agent. */
export type AgentConnector = (signal: AbortSignal) => Promise<Socket>;

/** One VMM (vmm/drivers.ts): the lifecycle boots and stops every VM through the same stages. */
export interface VmmDriver {
  readonly kind: VmmKind;
  /** The kernel arguments this VMM's guests need before banger's root and network ones. */
  readonly kernelArgs: string;
  /** Stage launch-vmm: the helper starts the VMM as the owner. */
  launch(spec: MachineSpec, scope: CallScope): Promise<LaunchedVmm>;
  /** Stage configure-vmm. */
  configure(launched: LaunchedVmm, spec: MachineSpec, signal: AbortSignal): Promise<void>;
  /** Stage start-vmm. */
  start(launched: LaunchedVmm): Promise<void>;
  /** Asks the guest to shut down (Ctrl-Alt-Del, the power button); the caller waits for the VMM to exit. */
  requestShutdown(controlSocket: string): Promise<void>;
  /** How to reach the guest agent of a VMM with this control socket. */
  agent(controlSocket: string): AgentConnector;
  /** Stops the guest's vCPUs; its memory stays (Firecracker PATCH /vm Paused, QMP stop). */
  pause(controlSocket: string): Promise<void>;
  /** Continues a paused guest (Firecracker PATCH /vm Resumed, QMP cont). */
  resume(controlSocket: string): Promise<void>;
  /** Whether the VMM holds its guest paused now (asked at start-up, when handles.json may be stale). */
  paused(controlSocket: string): Promise<boolean>;
  /**
   * Writes a paused guest's memory and device state into `dir` (the VMM writes them, as the owner). A
   * snapshot passes the copies of the disks it made: where the VMM's state names disk files
   * (Firecracker), it names these, which live as long as the snapshot, not the source VM's.
   */
  save(
    controlSocket: string,
    dir: string,
    signal: AbortSignal,
    disks?: { readonly copies: SnapshotDisks; readonly own: SnapshotDisks },
  ): Promise<void>;
  /**
   * In place of configure-vmm and start-vmm: a VMM launched with `incoming` takes the state saved in
   * `dir` and runs the guest on from where it was saved. A fork passes its own devices, which replace
   * those the state names, and gets its guest running with the network link held down (where the VMM
   * can: see setLink) until its identity is changed.
   */
  restore(launched: LaunchedVmm, dir: string, signal: AbortSignal, fork?: ForkDevices): Promise<void>;
  /**
   * Sets the guest's network link up or down (QEMU `set_link`); false when this VMM cannot
   * (Firecracker has no such control).
   */
  setLink(controlSocket: string, up: boolean): Promise<boolean>;
  /** Whether setLink can hold the link down (QEMU): the VMM then announces the guest as the link comes up. */
  readonly holdsLink: boolean;
}

/** How a program run through the agent ended, and what it printed (as much as the agent kept). */
export interface AgentRun {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface AgentInfo {
  /** qemu-ga's version, e.g. "7.2.22". */
  readonly version: string;
}

/** The guest agent of banger's guest kit (qemu-ga); vmm/agent-client.ts speaks its protocol. */
export interface AgentClient {
  /** guest-ping after the sync; resolves with guest-info's version. */
  ping(timeoutMs: number): Promise<AgentInfo>;
  /**
   * guest-shutdown (powerdown): qemu-ga runs the image's /sbin/shutdown and
   * sends no answer when that works; an error answer (no /sbin/shutdown, or it
   * failed) within `answerMs` is thrown; the whole call (sync included) takes at most `timeoutMs`.
   */
  shutdown(answerMs: number, timeoutMs?: number): Promise<void>;
  /** guest-exec of `path` with `args` (not waited for); resolves with its pid in the guest. */
  exec(path: string, args: readonly string[], timeoutMs: number): Promise<number>;
  /** guest-fsfreeze-freeze or guest-fsfreeze-thaw; resolves with the number of file systems it acted on. */
  fsfreeze(action: "freeze" | "thaw", timeoutMs: number): Promise<number>;
  /**
   * guest-exec of `path` with `args`, its output captured, waited for (guest-exec-status) until it
   * exits; the whole call takes at most `timeoutMs`. `thawFirst`: guest-fsfreeze-thaw in the same session
   * first (a frozen agent runs nothing else).
   */
  run(
    path: string,
    args: readonly string[],
    timeoutMs: number,
    options?: { readonly thawFirst?: boolean; readonly firstPollMs?: number },
  ): Promise<AgentRun>;
}

/** The VMMs a VM can run under and the agent client over their sockets; the composition root builds them. */
export interface VmmPorts {
  readonly drivers: Readonly<Record<VmmKind, VmmDriver>>;
  agentClient(connector: AgentConnector): AgentClient;
}

// ---- The image puller ---------------------------------------------------------------------------

export interface PullRequestPlain {
  readonly reference: string;
  readonly stagingDir: string;
  readonly platform: string;
  readonly minRootfsMib: number;
  /** Registry hosts reached over plain HTTP (the config's `registries.insecure`). */
  readonly insecureRegistries: readonly string[];
  /** The owner's credentials for the reference's registry, when they have some. */
  readonly credentials: readonly RegistryCredential[];
}

/** Credentials for one registry, as the puller takes them. */
export interface RegistryCredential {
  readonly registry: string;
  readonly username: string;
  readonly password: string;
  readonly identityToken: string;
}

export type PullEvent =
  | {
      readonly kind: "stage";
      readonly name: string;
      readonly done: boolean;
      readonly message: string;
    }
  | {
      readonly kind: "layer";
      readonly index: number;
      readonly digest: string;
      readonly doneBytes: number;
      readonly totalBytes: number;
      /** "waiting", "downloading", "cached", "downloaded", "applied". */
      readonly state: string;
    };

export interface PullOutcome {
  readonly manifestDigest: string;
  readonly platform: string;
  readonly rootfsFile: string;
  readonly rootfsBytes: number;
  readonly workSeedFile: string;
  readonly workSeedBytes: number;
  readonly config: ImageConfig;
  readonly canonicalReference: string;
}

/** What the orchestrator needs from the image puller. */
export interface PullerPort {
  /** Answers when the puller is up (UnavailableError naming its socket when not). */
  identify(scope: CallScope): Promise<ServiceIdentity>;
  pull(request: PullRequestPlain, scope: CallScope, onEvent: (event: PullEvent) => Promise<void>): Promise<PullOutcome>;
  /** Builds the built-in image `tiny` into the staging directory (no download). */
  buildTiny(
    request: { readonly stagingDir: string; readonly minRootfsMib: number },
    scope: CallScope,
    onEvent: (event: PullEvent) => Promise<void>,
  ): Promise<PullOutcome>;
  /** Removes cached blobs and built images not used in the last `keepDays` days (0: every one not in use). */
  pruneCache(
    keepDays: number,
    scope: CallScope,
  ): Promise<{ readonly removedBlobs: number; readonly freedBytes: number }>;
}

// ---- doctor's host probes -----------------------------------------------------------------------

/** Whether bangerd itself can open /dev/kvm read-write (the VMM runs as the same user). */
export type KvmAccess =
  | { readonly ok: true }
  | {
      readonly ok: false;
      /** errno code, e.g. "ENOENT", "EACCES". */
      readonly code: string;
    };

/** What `<binary> --version` gave. */
export type VersionOutput =
  | { readonly kind: "output"; readonly text: string }
  | { readonly kind: "missing" }
  | { readonly kind: "not-executable" }
  | { readonly kind: "failed"; readonly message: string };

/** The SSH key banger logs in to guests with, as found (never created here). */
export type SshKeyState =
  | { readonly kind: "ok"; readonly path: string; readonly managed: boolean; readonly fingerprint: string }
  | { readonly kind: "missing"; readonly path: string; readonly managed: boolean }
  | { readonly kind: "unusable"; readonly path: string; readonly managed: boolean; readonly message: string };

/** An IPv4 address of a host interface, e.g. { interface: "docker0", cidr: "172.17.0.1/16" }. */
export interface HostAddress {
  readonly interface: string;
  readonly cidr: string;
}

/** Read-only host probes (host/doctor-probes.ts is the real one; tests script them). */
export interface DoctorProbes {
  kvmAccess(): Promise<KvmAccess>;
  /** Runs `<binary> --version` (stdout and stderr together), killed when `signal` aborts. */
  version(binary: string, signal: AbortSignal): Promise<VersionOutput>;
  /** `tool`'s absolute path in /usr/sbin:/usr/bin:/sbin:/bin (bangerd's tools' PATH), or undefined. */
  findTool(tool: string): Promise<string | undefined>;
  /** net.ipv4.ip_forward where bangerd runs. */
  ipForwarding(): Promise<boolean>;
  /** Whether bangerd may listen on ports below 1024, and why. */
  lowPorts(): Promise<{ ok: boolean; why: string }>;
  /** IPv4 addresses of the interfaces where bangerd runs. */
  addresses(): Promise<readonly HostAddress[]>;
  freeSpace(dir: string): Promise<{ freeBytes: number; totalBytes: number }>;
  sshKey(): Promise<SshKeyState>;
}
