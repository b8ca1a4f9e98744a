/** The shapes VmmService speaks in, as the ops see them (vmm.proto has the wire forms). */

export type VmmKind = "firecracker" | "qemu-microvm";

/** The machine QEMU is started with (vmm.proto `QemuMachine`). */
export interface QemuMachine {
  /** 1–32. */
  vcpu: number;
  /** 128–262144. */
  memoryMib: number;
  /** Inside the state directory. */
  kernelPath: string;
  /** Inside the state directory; "" = none. */
  initrdPath: string;
  /** Printable ASCII, ≤ 2048 bytes, no `"`. */
  bootArgs: string;
  /** Inside the state directory, or the VM's own dm-snapshot node `/dev/mapper/bgr-<vm_id>-root`. */
  rootDisk: string;
  /** Inside the state directory. */
  workDisk: string;
  /** Lowercase, colon-separated, unicast. */
  mac: string;
  /** KVM (refused with KVM_ABSENT where /dev/kvm is not usable) or TCG. */
  kvm: boolean;
  /** tsc_early_khz under TCG; 0 = the host's, measured by the helper. */
  tscKhz: number;
  /** `-incoming defer`: wait for a saved state (fed over QMP) instead of booting. */
  incoming: boolean;
}

export interface VmmProcessInfo {
  vmId: string;
  pid: number;
  /** Clock ticks since boot (/proc/<pid>/stat field 22). */
  startTime: bigint;
  kind: VmmKind;
  /** Real uid of the process. */
  uid: number;
}

export interface LaunchResult {
  pid: number;
  /** Clock ticks since boot (/proc/<pid>/stat field 22); `vmmStartDate` turns it into a Date. */
  startTime: bigint;
  /** Firecracker's API socket or QEMU's QMP socket. */
  controlSocket: string;
  logPath: string;
  consolePath: string;
}

export type VmmSignal = "TERM" | "KILL";

/** What GetVmm answers. */
export interface VmmState {
  readonly running: boolean;
  /** CPU time used, user + system. */
  readonly cpuTimeMs: number;
  readonly rssBytes: number;
}

/** What LaunchVmm asks (a type literal: a test's `Record<string, unknown>` converts to it). */
export type LaunchRequest = {
  vmId: string;
  kind: VmmKind;
  qemu?: QemuMachine | undefined;
  /** Bytes kept per log (current + predecessor); 0 or absent = DEFAULT_LOG_MAX_BYTES. */
  logMaxBytes?: number | bigint | undefined;
};
