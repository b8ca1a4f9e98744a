/**
 * Stopping a VM's VMM: through the guest agent's power-off when the guest has
 * the kit, else (or when that fails) the power button, then SIGTERM, then
 * SIGKILL, each within the stop's timeout (a paused guest is resumed first,
 * unless the stop is forced); then its host features, tap and
 * root device are released and its handles forgotten.
 */
import { FailedPreconditionError } from "@banger/common";
import { getVmById, type VmRecord } from "../../store/index.js";
import type { CallScope } from "../call-scope.js";
import { agentOf } from "./agent.js";
import type { VmContext } from "./context.js";
import type { Handles } from "./model.js";
import { resumeHandles } from "./pause.js";
import { detachRoot } from "./root-disk.js";
import { OrchestratorReason } from "../../reasons.js";

/** How often a stop asks the helper whether the VMM has exited. */
const EXIT_POLL_MS = 100;
const DEFAULT_STOP_TIMEOUT_MS = 30_000;
/** How long a stop gives the guest after the agent's power-off (within the stop's timeout) before the power button. */
const AGENT_STOP_MS = 10_000;
/** The kit's power-off, run through the agent when guest-shutdown cannot (no /sbin/shutdown in the image). */
const KIT_POWEROFF = ["/run/banger/busybox", ["sh", "/run/banger/kit/poweroff"]] as const;
/** How long a VMM gets to exit after SIGTERM before SIGKILL. */
const TERM_GRACE_MS = 3_000;

export interface HaltOptions {
  readonly timeoutMs: number | undefined;
  readonly force: boolean;
}

/** Stops the VMM (graceful first unless `force`), then releases its tap and NAT rule. */
export async function halt(ctx: VmContext, vm: VmRecord, options: HaltOptions, scope: CallScope): Promise<void> {
  let handle = ctx.runtime.handles.get(vm.id);
  // A paused guest cannot shut down: it is resumed first (a forced stop kills it as it is).
  if (handle?.paused && !options.force) {
    handle = await resumeHandles(ctx, vm, handle).catch((error: unknown) => {
      ctx.logger.warn({ vm: vm.name, err: error }, "could not resume the paused guest to stop it; killing its VMM");
      return handle;
    });
  }
  if (handle) await stopVmm(ctx, vm, handle, handle.paused ? { ...options, force: true } : options, scope);
  await ctx.connections.closeGuest(vm.id);
  const current = (await getVmById(ctx.db, vm.id)) ?? vm;
  await ctx.eachCapability(true, (c) => c.cleanup?.(current, scope));
  await ctx.host.deleteTap(vm.id, scope);
  if (handle?.root) await detachRoot(ctx, vm, handle.root, scope);
  await ctx.runtime.saveHandles(vm, undefined);
}

async function stopVmm(
  ctx: VmContext,
  vm: VmRecord,
  handle: Handles,
  options: HaltOptions,
  scope: CallScope,
): Promise<void> {
  const { host, logger } = ctx;
  const startTime = new Date(handle.startTime);
  let gone = false;
  const began = Date.now();
  const timeoutMs = options.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS;
  const left = () => Math.max(0, began + timeoutMs - Date.now());
  let how = "SIGKILL";
  if (!options.force && handle.agent) {
    // The guest powers off through its agent: guest-shutdown (the image's /sbin/shutdown), else the kit's
    // poweroff (asks PID 1 as its init expects).
    try {
      const agent = agentOf(ctx, vm, handle);
      how = "the agent's guest-shutdown";
      await agent
        .shutdown(Math.min(1_000, left()), Math.max(500, Math.min(5_000, left())))
        .catch(async (error: unknown) => {
          if (!(error instanceof FailedPreconditionError) || error.reason !== OrchestratorReason.AGENT_ERROR)
            throw error;
          // E.g. no /sbin/shutdown, or systemd's without logind on D-Bus (it schedules "+0" through logind).
          logger.info({ vm: vm.name, err: error }, "the guest's shutdown failed; the agent runs the kit's poweroff");
          how = "the agent running the kit's poweroff";
          await agent.exec(KIT_POWEROFF[0], KIT_POWEROFF[1], Math.max(500, Math.min(3_000, left())));
        });
      await waitForExit(ctx, handle, vm.id, Math.min(AGENT_STOP_MS, left()), scope);
      gone = true;
    } catch (error) {
      logger.warn({ vm: vm.name, err: error }, "the guest agent did not stop the guest; pressing the power button");
    }
  }
  if (!options.force && !gone) {
    // The guest shuts down (Ctrl-Alt-Del, the power button); then the VMM is asked to exit (SIGTERM); then it is killed.
    try {
      how = "the power button";
      await ctx.vmm.drivers[vm.vmm].requestShutdown(handle.controlSocket);
      await waitForExit(ctx, handle, vm.id, left(), scope);
      gone = true;
    } catch (error) {
      logger.warn({ vm: vm.name, err: error }, "the guest did not shut down in time; stopping the VMM");
      try {
        how = "SIGTERM to the VMM";
        await host.signalVmm(vm.id, handle.pid, startTime, "term", scope);
        await waitForExit(ctx, handle, vm.id, TERM_GRACE_MS, scope);
        gone = true;
      } catch (termError) {
        logger.warn({ vm: vm.name, err: termError }, "the VMM did not exit on SIGTERM; killing it");
      }
    }
  }
  if (!gone) {
    how = "SIGKILL to the VMM";
    await host.signalVmm(vm.id, handle.pid, startTime, "kill", scope);
  }
  logger.info({ vm: vm.name, stopped_by: how, duration_ms: Date.now() - began }, `VM stopped by ${how}`);
}

/** Polls the helper until the VM's VMM is gone (it proves the pid is still that VMM). */
async function waitForExit(
  ctx: VmContext,
  handle: Handles,
  vmId: string,
  timeoutMs: number,
  scope: CallScope,
): Promise<void> {
  const startTime = new Date(handle.startTime);
  const deadline = Date.now() + timeoutMs;
  while ((await ctx.host.vmmState(vmId, handle.pid, startTime, scope)).running) {
    if (Date.now() > deadline || scope.signal?.aborted) {
      throw new Error(`VMM ${handle.pid} still runs after ${timeoutMs} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, EXIT_POLL_MS));
  }
}
