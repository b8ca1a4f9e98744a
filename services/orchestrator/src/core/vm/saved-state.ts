/**
 * Suspend to disk: `vm stop --save` has the VMM write the paused guest's
 * memory and device state into `<state>/vms/<id>/saved/` (the VMM writes the
 * files, as the owner), then ends the VMM; the next start launches the VMM to
 * take that state instead of booting the kernel, and removes it once the
 * guest runs. `saved.json`, written last, says the state is whole and what
 * machine it fits (VMM, vCPUs, memory, work disk size, kernel): a state that does not fit the
 * VM as it starts (a `vm set` changed it) is dropped and the VM boots cold.
 */
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { VmRecord } from "../../store/index.js";
import type { VmContext } from "./context.js";
import type { Handles } from "./model.js";
import { resumeHandles } from "./pause.js";

const RECORD = "saved.json";

/** What saved.json says of a saved state. */
export interface SavedState {
  readonly dir: string;
  readonly vmm: VmRecord["vmm"];
  readonly vcpu: number;
  readonly memoryMib: number;
  readonly workDiskMib: number;
  readonly kernel: string;
  readonly savedAt: string;
}

/**
 * Pauses the guest (if it is not) and has the VMM write its state; the VMM still runs after (the
 * caller ends it). A failure removes what was written and lets a guest this call paused run on.
 */
export async function saveState(ctx: VmContext, vm: VmRecord, handle: Handles, signal: AbortSignal): Promise<void> {
  const driver = ctx.vmm.drivers[vm.vmm];
  const dir = ctx.state.vm(vm.id).savedDir;
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { mode: 0o700 });
  const pausedHere = !handle.paused;
  try {
    if (pausedHere) {
      await driver.pause(handle.controlSocket);
      await ctx.runtime.saveHandles(vm, { ...handle, paused: true });
    }
    await driver.save(handle.controlSocket, dir, signal);
    const record: Omit<SavedState, "dir"> = {
      vmm: vm.vmm,
      vcpu: vm.vcpu,
      memoryMib: vm.memoryMib,
      workDiskMib: vm.workDiskMib,
      kernel: vm.kernelName,
      savedAt: ctx.now().toISOString(),
    };
    await writeFile(join(dir, RECORD), JSON.stringify(record, null, 2), { mode: 0o600 });
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    if (pausedHere) {
      await resumeHandles(ctx, vm, { ...handle, paused: true }).catch((resumeError: unknown) =>
        ctx.logger.error({ vm: vm.name, err: resumeError }, "could not resume the guest after a failed save"),
      );
    }
    throw error;
  }
}

/**
 * VM `vm`'s saved state when it has a whole one that fits it as it is now; a state that does not fit
 * is removed, with why in `dropped`.
 */
export async function usableSavedState(
  ctx: VmContext,
  vm: VmRecord,
): Promise<{ saved?: SavedState; dropped?: string }> {
  const dir = ctx.state.vm(vm.id).savedDir;
  let record: Omit<SavedState, "dir">;
  try {
    record = JSON.parse(await readFile(join(dir, RECORD), "utf8")) as Omit<SavedState, "dir">;
  } catch {
    await dropSavedState(ctx, vm); // nothing, or a save cut off before its end
    return {};
  }
  const differs = [
    record.vmm !== vm.vmm && `VMM ${record.vmm} → ${vm.vmm}`,
    record.vcpu !== vm.vcpu && `vcpu ${record.vcpu} → ${vm.vcpu}`,
    record.memoryMib !== vm.memoryMib && `memory ${record.memoryMib} → ${vm.memoryMib} MiB`,
    record.workDiskMib !== vm.workDiskMib && `work disk ${record.workDiskMib} → ${vm.workDiskMib} MiB`,
    record.kernel !== vm.kernelName && `kernel ${record.kernel} → ${vm.kernelName}`,
  ].filter((d): d is string => typeof d === "string");
  if (differs.length > 0) {
    await dropSavedState(ctx, vm);
    return { dropped: `the saved state does not fit the VM any more (${differs.join(", ")})` };
  }
  return { saved: { ...record, dir } };
}

/** Removes VM `vm`'s saved state, if any. */
export async function dropSavedState(ctx: VmContext, vm: VmRecord): Promise<void> {
  await rm(ctx.state.vm(vm.id).savedDir, { recursive: true, force: true });
}
