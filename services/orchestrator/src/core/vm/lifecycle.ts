/**
 * Start, stop, restart and delete: each an operation under the VM's
 * lifecycle lock, the VM in its phase (starting, stopping, deleting) while it
 * runs. A start that fails unwinds its stages and records the error on the row.
 */
import { rm } from "node:fs/promises";
import { FailedPreconditionError } from "@banger/common";
import { deleteVm, getVmByName, updateVm, type OperationRecord, type VmRecord } from "../../store/index.js";
import type { OperationContext } from "../operations.js";
import { explainVmFailure } from "../readiness.js";
import { forgetHostKey } from "../vm-observe.js";
import { boot, bootLogs, type BootOptions } from "./boot.js";
import { scopeOf, type VmContext } from "./context.js";
import { halt, type HaltOptions } from "./halt.js";
import { refreshGuestFiles } from "./guest-refresh.js";
import { removeRunDir } from "./host-cleanup.js";
import { vmResult } from "./result.js";
import { validVmName } from "./model.js";
import { pausedError } from "./pause.js";
import { dropSavedState, saveState, usableSavedState } from "./saved-state.js";
import { applyPending } from "./settings.js";
import { unwind, type UndoList } from "./undo.js";

export async function startVm(
  ctx: VmContext,
  name: string,
  options: { sshTimeoutMs: number | undefined; skipSshWait: boolean },
): Promise<OperationRecord> {
  const vm = await ctx.find(name);
  if (ctx.runtime.handles.get(vm.id)?.paused) throw pausedError(name);
  if (ctx.runtime.handles.has(vm.id)) {
    throw new FailedPreconditionError(`VM ${name} is already running`, { reason: "VM_RUNNING" });
  }
  return ctx.operations.start("start-vm", name, (op) =>
    ctx.runtime.lifecycle(name, async () => {
      const current = await applyPending(ctx, await ctx.find(name));
      await refreshGuestFiles(ctx, op, current);
      await bootOrUnwind(ctx, op, name, current, options, true);
      return vmResult(ctx, name);
    }),
  );
}

/**
 * With `save`, the guest's memory and device state are saved first (stage save-state, the guest paused)
 * and the VMM is then killed: the next start resumes from there.
 */
export async function stopVm(
  ctx: VmContext,
  name: string,
  options: HaltOptions & { save?: boolean },
): Promise<OperationRecord> {
  const vm = await ctx.find(name);
  if (!ctx.runtime.handles.has(vm.id)) {
    throw new FailedPreconditionError(`VM ${name} is not running`, { reason: "VM_NOT_RUNNING" });
  }
  return ctx.operations.start("stop-vm", name, (op) =>
    ctx.runtime.lifecycle(name, async () => {
      ctx.runtime.phases.set(vm.id, "stopping");
      try {
        const handle = ctx.runtime.handles.get(vm.id);
        if (options.save && handle) {
          await op.stage("save-state", () => saveState(ctx, vm, handle, op.signal));
        }
        const how = options.save ? { timeoutMs: options.timeoutMs, force: true } : options;
        await op.stage("stop-vmm", () => halt(ctx, vm, how, scopeOf(op)));
        await updateVm(ctx.db, name, { updatedAt: ctx.now(), desiredState: "stopped" });
      } finally {
        ctx.runtime.phases.delete(vm.id);
      }
      return vmResult(ctx, name);
    }),
  );
}

export async function restartVm(
  ctx: VmContext,
  name: string,
  options: HaltOptions & { skipSshWait: boolean },
): Promise<OperationRecord> {
  const vm = await ctx.find(name);
  const { phases } = ctx.runtime;
  return ctx.operations.start("restart-vm", name, (op) =>
    ctx.runtime.lifecycle(name, async () => {
      if (ctx.runtime.handles.has(vm.id)) {
        phases.set(vm.id, "stopping");
        await op.stage("stop-vmm", () => halt(ctx, vm, options, scopeOf(op))).finally(() => phases.delete(vm.id));
      }
      const current = await applyPending(ctx, await ctx.find(name));
      await refreshGuestFiles(ctx, op, current);
      const bootOptions = { skipSshWait: options.skipSshWait, sshTimeoutMs: undefined };
      await bootOrUnwind(ctx, op, name, current, bootOptions, false);
      return vmResult(ctx, name);
    }),
  );
}

/**
 * Boots `vm` (it is starting meanwhile); a failure gets what the guest printed, unwinds the boot's
 * stages and, for a start (`recordError`), is written to the row.
 */
async function bootOrUnwind(
  ctx: VmContext,
  op: OperationContext,
  name: string,
  vm: VmRecord,
  options: BootOptions,
  recordError: boolean,
): Promise<void> {
  let undo: UndoList = [];
  ctx.runtime.phases.set(vm.id, "starting");
  try {
    const { saved, dropped } = await usableSavedState(ctx, vm);
    if (dropped) {
      await op.stage("resume-vmm", () => op.track("resume-vmm", "running", `${dropped}: booting cold`));
    }
    if (saved && (await boot(ctx, op, vm, undo, { ...options, restore: saved })) === "running") {
      await dropSavedState(ctx, vm);
      return;
    }
    if (saved) {
      // The VMM refused the saved state (resume-vmm says why): what the try made is undone, the state
      // dropped, and the VM boots cold.
      await unwind(ctx.logger, undo, name);
      undo = [];
      await dropSavedState(ctx, vm);
    }
    await boot(ctx, op, vm, undo, options);
  } catch (error) {
    if (!op.signal.aborted) await explainVmFailure(error, bootLogs(ctx, vm.id));
    await unwind(ctx.logger, undo, name);
    if (recordError) {
      await updateVm(ctx.db, name, { updatedAt: ctx.now(), lastError: `${(error as Error).message} (${op.id})` });
    }
    throw error;
  } finally {
    ctx.runtime.phases.delete(vm.id);
  }
}

/** Idempotent; a create still running for the VM is cancelled first (it unwinds what it made). */
export async function deleteVmByName(
  ctx: VmContext,
  name: string,
): Promise<{ existed: boolean; operation: OperationRecord }> {
  const { operations, runtime, db } = ctx;
  validVmName(name);
  const runningCreate = runtime.creating.get(name);
  if (runningCreate) await operations.cancel(runningCreate);
  const found = await getVmByName(db, name);
  // Deleting what is not there succeeds: an operation with nothing to do.
  if (!found && !runningCreate)
    return { existed: false, operation: await operations.start("delete-vm", name, () => Promise.resolve(null)) };
  const operation = await operations.start("delete-vm", name, (op) =>
    runtime.lifecycle(name, async () => {
      const vm = await getVmByName(db, name);
      if (!vm) return null; // the cancelled create took it all away
      runtime.phases.set(vm.id, "deleting");
      try {
        await op.stage("stop-vmm", () => halt(ctx, vm, { timeoutMs: 5_000, force: false }, scopeOf(op)));
        // Once the row is gone the rest follows, cancelled or not: a cancel here would leave the VMM's files.
        await op.stage("remove-files", async () => {
          await deleteVm(db, name);
          // The VM's directory goes whole: its disks, handles and saved state.
          await rm(ctx.state.vm(vm.id).dir, { recursive: true, force: true });
          await removeRunDir(ctx, vm.id, { signal: new AbortController().signal });
          await forgetHostKey(ctx.ssh.knownHostsFile, name);
        });
      } finally {
        runtime.phases.delete(vm.id);
      }
      ctx.logger.info({ vm: name, id: vm.id }, "VM deleted");
      return null;
    }),
  );
  return { existed: true, operation };
}
