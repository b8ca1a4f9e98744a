/**
 * Pause and resume: the VMM stops the guest's vCPUs and keeps its memory
 * (Firecracker's PATCH /vm, QEMU's QMP stop/cont); the VM is PAUSED until
 * resumed. The flag lives in the VM's handles (handles.json), and recovery
 * asks the VMM itself at start-up. Each runs under the VM's lifecycle lock,
 * so it waits for a start or stop under way.
 */
import { FailedPreconditionError } from "@banger/common";
import type { VmRecord } from "../../store/index.js";
import { setGuestClock } from "./agent.js";
import type { VmContext } from "./context.js";
import type { Handles, VmView } from "./model.js";

/** The error every call that needs a running guest gives for a paused one. */
export function pausedError(name: string): FailedPreconditionError {
  return new FailedPreconditionError(`VM ${name} is paused: resume it with 'banger vm resume ${name}'`, {
    reason: "VM_PAUSED",
  });
}

/** VM `name`'s handles, which must exist (VM_NOT_RUNNING). */
function runningHandles(ctx: VmContext, vm: VmRecord): Handles {
  const handle = ctx.runtime.handles.get(vm.id);
  if (!handle) throw new FailedPreconditionError(`VM ${vm.name} is not running`, { reason: "VM_NOT_RUNNING" });
  return handle;
}

export async function pauseVm(ctx: VmContext, name: string): Promise<VmView> {
  await ctx.find(name);
  return ctx.runtime.lifecycle(name, async () => {
    const vm = await ctx.find(name);
    const handle = runningHandles(ctx, vm);
    if (handle.paused) throw pausedError(name);
    await ctx.vmm.drivers[vm.vmm].pause(handle.controlSocket);
    await ctx.runtime.saveHandles(vm, { ...handle, paused: true });
    ctx.logger.info({ vm: name }, "VM paused");
    return ctx.runtime.view(vm);
  });
}

export async function resumeVm(ctx: VmContext, name: string): Promise<VmView> {
  await ctx.find(name);
  return ctx.runtime.lifecycle(name, async () => {
    const vm = await ctx.find(name);
    const handle = runningHandles(ctx, vm);
    if (!handle.paused) {
      throw new FailedPreconditionError(`VM ${name} is not paused`, { reason: "VM_NOT_PAUSED" });
    }
    const running = await resumeHandles(ctx, vm, handle);
    ctx.logger.info({ vm: name, clock: await setGuestClock(ctx, vm, running) }, "VM resumed");
    return ctx.runtime.view(vm);
  });
}

/** Continues a paused guest and records it; the handles as they are then. */
export async function resumeHandles(ctx: VmContext, vm: VmRecord, handle: Handles): Promise<Handles> {
  await ctx.vmm.drivers[vm.vmm].resume(handle.controlSocket);
  const { paused: _paused, ...running } = handle;
  await ctx.runtime.saveHandles(vm, running);
  return running;
}
