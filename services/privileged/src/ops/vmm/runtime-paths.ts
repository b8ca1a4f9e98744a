import { join } from "node:path";
import { validVmId } from "../../validate/ids.js";
import type { VmmKind } from "./types.js";

/** Every path of one VM's runtime directory; nobody joins these by hand. */
export interface VmRuntimePaths {
  /** `<runtimeDir>/vms` */
  readonly vmsDir: string;
  /** `<runtimeDir>/vms/<vm_id>` */
  readonly dir: string;
  readonly firecrackerSocket: string;
  readonly qmpSocket: string;
  /** QEMU: the guest agent's virtio-serial port (banger's guest kit runs qemu-ga on the other end). */
  readonly agentSocket: string;
  readonly vmmLog: string;
  readonly consoleLog: string;
}

export const FIRECRACKER_SOCKET = "firecracker.sock";
export const QMP_SOCKET = "qmp.sock";
const AGENT_SOCKET = "agent.sock";
export const VMM_LOG = "vmm.log";
export const CONSOLE_LOG = "console.log";

export function vmRuntimePaths(runtimeDir: string, vmId: string): VmRuntimePaths {
  const vmsDir = join(runtimeDir, "vms");
  const dir = join(vmsDir, validVmId(vmId));
  return {
    vmsDir,
    dir,
    firecrackerSocket: join(dir, FIRECRACKER_SOCKET),
    qmpSocket: join(dir, QMP_SOCKET),
    agentSocket: join(dir, AGENT_SOCKET),
    vmmLog: join(dir, VMM_LOG),
    consoleLog: join(dir, CONSOLE_LOG),
  };
}

export function controlSocketOf(paths: VmRuntimePaths, kind: VmmKind): string {
  return kind === "firecracker" ? paths.firecrackerSocket : paths.qmpSocket;
}

/** The control socket's name inside the VM's directory. */
export function controlSocketName(kind: VmmKind): string {
  return kind === "firecracker" ? FIRECRACKER_SOCKET : QMP_SOCKET;
}
