/**
 * SetVm: a stopped VM's settings change now; a running VM's vCPU, memory and
 * work disk size wait in its pending changes until its next start (NAT
 * changes at once through its capability).
 */
import { InvalidArgumentError } from "@banger/common";
import { updateVm, type VmRecord } from "../../store/index.js";
import type { VmChange } from "../capabilities.js";
import type { VmContext } from "./context.js";
import { validMemoryMib, validVcpu, type VmView } from "./model.js";

export async function setVm(ctx: VmContext, name: string, change: VmChange): Promise<VmView> {
  const vm = await ctx.find(name);
  const set = Object.entries(change).filter(([, value]) => value !== undefined);
  if (set.length === 0) {
    throw new InvalidArgumentError("nothing to change: give vcpu, memory_mib, work_disk_mib or nat", {
      reason: "NOTHING_TO_CHANGE",
    });
  }
  return ctx.runtime.lifecycle(name, async () => {
    const running = ctx.runtime.handles.has(vm.id);
    const pending: Record<string, number> = { ...(vm.pendingChanges as Record<string, number>) };
    const patch: { vcpu?: number; memoryMib?: number; workDiskMib?: number; nat?: boolean } = {};
    if (change.vcpu !== undefined) {
      const vcpu = validVcpu(change.vcpu);
      if (running) pending["vcpu"] = vcpu;
      else patch.vcpu = vcpu;
    }
    if (change.memoryMib !== undefined) {
      const memory = validMemoryMib(change.memoryMib);
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
    await ctx.eachCapability(false, (c) => c.applyConfigChange?.(vm, { ...patch }, running, scope));
    const updated = await updateVm(ctx.db, name, { updatedAt: ctx.now(), ...patch, pendingChanges: pending });
    return ctx.runtime.view(updated);
  });
}

/** Pending SetVm changes become the VM's settings (it is stopped now). */
export async function applyPending(ctx: VmContext, vm: VmRecord): Promise<VmRecord> {
  const pending = vm.pendingChanges as Record<string, number>;
  if (Object.keys(pending).length === 0) return vm;
  if (pending["work_disk_mib"] !== undefined) {
    await ctx.guest.growWorkDisk(ctx.state.vm(vm.id).workDisk, pending["work_disk_mib"], new AbortController().signal);
  }
  return updateVm(ctx.db, vm.name, {
    updatedAt: ctx.now(),
    ...(pending["vcpu"] !== undefined ? { vcpu: pending["vcpu"] } : {}),
    ...(pending["memory_mib"] !== undefined ? { memoryMib: pending["memory_mib"] } : {}),
    ...(pending["work_disk_mib"] !== undefined ? { workDiskMib: pending["work_disk_mib"] } : {}),
    pendingChanges: {},
  });
}
