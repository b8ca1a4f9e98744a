/**
 * What a VM is to the rest of the orchestrator: the service's interface, a VM
 * as it is now (its row, state, pid, agent health), the handles of a running
 * one, and the checks of a name and of a size.
 */
import { InvalidArgumentError, type Reason } from "@banger/common";
import type { AgentHealthName, OperationRecord, SnapshotView, VmRecord, VmStateName } from "../../store/index.js";
import type { CallScope } from "../call-scope.js";
import type { VmChange } from "../capabilities.js";
import type { GuestTarget } from "../guest-exec.js";
import type { PortRequest } from "../port-publishing.js";
import type { SshTarget, VmUsage } from "../vm-observe.js";

export type { AgentHealthName, VmStateName };

/** A VM as it is now: its row, its state, its VMM's pid (0 when none) and its agent's health. */
export interface VmView extends VmRecord {
  readonly state: VmStateName;
  readonly pid: number;
  readonly agentHealth: AgentHealthName;
  /** qemu-ga's version when it answered. */
  readonly agentVersion: string;
  /** A stopped VM's saved state (vm stop --save): when it was saved. */
  readonly savedAt?: Date;
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
  /** Host ports to publish (`-p`); none when absent. */
  readonly publishedPorts?: readonly PortRequest[];
  /** Fork: the snapshot the VM resumes from instead of booting; "" or absent = a cold create. */
  readonly fromSnapshot?: string;
}

export interface VmService {
  create(req: CreateVmRequest, scope: CallScope): Promise<OperationRecord>;
  start(name: string, options: { sshTimeoutMs: number | undefined; skipSshWait: boolean }): Promise<OperationRecord>;
  /** `save`: the guest's memory is saved first and the next start resumes from it (stop --save). */
  stop(
    name: string,
    options: { timeoutMs: number | undefined; force: boolean; save?: boolean },
  ): Promise<OperationRecord>;
  restart(
    name: string,
    options: { timeoutMs: number | undefined; force: boolean; skipSshWait: boolean },
  ): Promise<OperationRecord>;
  /** Idempotent; a missing VM gives `existed: false` and an operation with nothing to do. */
  delete(name: string): Promise<{ existed: boolean; operation: OperationRecord }>;
  set(name: string, change: VmChange): Promise<VmView>;
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
  /**
   * Publishes a host port to the VM: at once when it runs, at its next start otherwise. Errors:
   * INVALID_PORT, HOST_IP_NOT_LOCAL, PRIVILEGED_PORT, TOO_MANY_PORTS, PORT_PUBLISHED, HOST_PORT_IN_USE,
   * HOST_PORT_NOT_BINDABLE.
   */
  publishPort(name: string, port: PortRequest): Promise<VmView>;
  /** Stops publishing a host port. Errors: INVALID_PORT, PORT_NOT_PUBLISHED. */
  unpublishPort(name: string, port: { hostPort: number; protocol: string; hostIp: string }): Promise<VmView>;
  /** Pauses a running VM (its VMM keeps its memory). Errors: VM_NOT_RUNNING, VM_PAUSED. */
  pause(name: string): Promise<VmView>;
  /** Resumes a paused VM. Errors: VM_NOT_RUNNING, VM_NOT_PAUSED. */
  resume(name: string): Promise<VmView>;
  /**
   * Takes snapshot `as` of a running VM (an operation; its result is the snapshot). Errors:
   * INVALID_SNAPSHOT_NAME, SNAPSHOT_NAME_TAKEN, VM_NOT_RUNNING.
   */
  snapshot(name: string, as: string): Promise<OperationRecord>;
  listSnapshots(): Promise<SnapshotView[]>;
  /** Errors: INVALID_SNAPSHOT_NAME, SNAPSHOT_NOT_FOUND. */
  getSnapshot(name: string): Promise<SnapshotView>;
  /** Idempotent. Errors: INVALID_SNAPSHOT_NAME. */
  deleteSnapshot(name: string): Promise<{ existed: boolean }>;
  /** At start-up: VMs whose VMM died while the orchestrator was away are cleaned and marked stopped. */
  recover(): Promise<void>;
  /** Closes the SSH connections kept open to guests (at shutdown). */
  closeConnections(): void;
}

/** What is true on the host for a running VM; kept in memory and in handles.json. */
export interface Handles {
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
  /** The guest is paused (PauseVm): its VMM runs, its vCPUs do not. */
  readonly paused?: boolean;
  /** dm-snapshot VMs: the root device and the loop devices under it (image, COW), released at stop. */
  readonly root?: RootAttachment;
}

/** A dm-snapshot root device and the loops it stands on. */
export interface RootAttachment {
  readonly device: string;
  readonly loops: readonly { readonly device: string; readonly backingFile: string }[];
}

const VM_NAME = /^[a-z0-9][a-z0-9-]{0,31}$/;

export function validVmName(name: string): string {
  if (!VM_NAME.test(name)) {
    throw new InvalidArgumentError(`VM name must match ${VM_NAME.source}, got ${JSON.stringify(name)}`, {
      reason: "INVALID_VM_NAME",
    });
  }
  return name;
}

export function inRange(value: number, low: number, high: number, what: string, reason: Reason): number {
  if (!Number.isInteger(value) || value < low || value > high) {
    throw new InvalidArgumentError(`${what} must be between ${low} and ${high}, got ${value}`, { reason });
  }
  return value;
}

/** The vCPU count of a VM: 1 to 32. */
export const validVcpu = (value: number): number => inRange(value, 1, 32, "vcpu", "INVALID_VCPU");
/** A VM's memory: 128 MiB to 256 GiB. */
export const validMemoryMib = (value: number): number => inRange(value, 128, 262144, "memory_mib", "INVALID_MEMORY");
