/**
 * What the VM lifecycle needs from the privileged helper, in plain types.
 * The helper derives every name and path from the VM id itself; this port
 * only states intents. peers/privileged.ts implements it over the socket;
 * unit tests pass a scripted one.
 */
import type { CallScope } from "./call-scope.js";

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
  /** Returns the tap's name; `fromPool` takes that warm-pool tap over instead of making one. */
  createTap(vmId: string, bridge: string, scope: CallScope, fromPool?: string): Promise<string>;
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
}

/** A file banger writes into a guest's root filesystem. */
export interface GuestFileSpec {
  readonly path: string;
  readonly content: Uint8Array;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
}
