/** A VM in proto JSON form: the result of its operations, and the rpc's shape. */
import type { JsonObject } from "../../store/index.js";
import type { VmContext } from "./context.js";
import type { VmView } from "./model.js";

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

/** The result of an operation on VM `name`: the VM as it is now. */
export async function vmResult(ctx: VmContext, name: string): Promise<JsonObject> {
  return { vm: vmJson(ctx.runtime.view(await ctx.find(name))) };
}
