import { VM_RUNTIME_FILES, runtimeLayout } from "@banger/common/layout";
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

export const FIRECRACKER_SOCKET = VM_RUNTIME_FILES.firecrackerSocket;
export const QMP_SOCKET = VM_RUNTIME_FILES.qmpSocket;
export const VMM_LOG = VM_RUNTIME_FILES.vmmLog;
export const CONSOLE_LOG = VM_RUNTIME_FILES.consoleLog;

/** The VM's paths from common's layout (the orchestrator derives the same ones), its id validated first. */
export function vmRuntimePaths(runtimeDir: string, vmId: string): VmRuntimePaths {
  const layout = runtimeLayout(runtimeDir);
  const vm = layout.vm(validVmId(vmId));
  return {
    vmsDir: layout.vmsDir,
    dir: vm.dir,
    firecrackerSocket: vm.firecrackerSocket,
    qmpSocket: vm.qmpSocket,
    agentSocket: vm.agentSocket,
    vmmLog: vm.vmmLog,
    consoleLog: vm.consoleLog,
  };
}

export function controlSocketOf(paths: VmRuntimePaths, kind: VmmKind): string {
  return kind === "firecracker" ? paths.firecrackerSocket : paths.qmpSocket;
}

/** The control socket's name inside the VM's directory. */
export function controlSocketName(kind: VmmKind): string {
  return kind === "firecracker" ? FIRECRACKER_SOCKET : QMP_SOCKET;
}
