/**
 * The guest agent of banger's guest kit (qemu-ga), for VMs whose kernel's
 * initrd has it: asked for health by list and show, waited for at boot, and
 * asked to power the guest off at stop. One session at a time per VM.
 */
import { FailedPreconditionError } from "@banger/common";
import type { VmRecord } from "../../store/index.js";
import type { AgentClient } from "../ports.js";
import type { VmContext } from "./context.js";
import type { Handles, VmView } from "./model.js";

/** How long list and show wait for an agent's answer. */
const AGENT_HEALTH_MS = 1_000;

/** VM `vm`'s agent behind its VMM's control socket; its calls wait for the VM's other agent sessions. */
export function agentOf(ctx: VmContext, vm: VmRecord, handle: Handles): AgentClient {
  const client = ctx.vmm.agentClient(ctx.vmm.drivers[vm.vmm].agent(handle.controlSocket));
  const serial = ctx.runtime.agentLock(vm.id);
  return {
    ping: (ms) => serial(() => client.ping(ms)),
    shutdown: (answerMs, timeoutMs) => serial(() => client.shutdown(answerMs, timeoutMs)),
    exec: (path, args, ms) => serial(() => client.exec(path, args, ms)),
    fsfreeze: (action, ms) => serial(() => client.fsfreeze(action, ms)),
    run: (path, args, ms, options) => serial(() => client.run(path, args, ms, options)),
  };
}

/** The VM with its agent's health, asked now (running VMs with the kit only). */
export async function observe(ctx: VmContext, vm: VmRecord): Promise<VmView> {
  const { runtime } = ctx;
  const handle = runtime.handles.get(vm.id);
  if (!handle) return runtime.view(vm);
  // A paused guest answers nothing; asking would only wait out the timeout.
  if (handle.paused) return runtime.view(vm);
  if (!handle.agent) return runtime.view(vm, { health: "none", version: "" });
  try {
    const { version } = await agentOf(ctx, vm, handle).ping(AGENT_HEALTH_MS);
    return runtime.view(vm, { health: "ok", version });
  } catch {
    return runtime.view(vm, { health: "unreachable", version: "" });
  }
}

/** Polls the agent until it answers: the guest's kit is up. Returns qemu-ga's version. */
export async function waitForAgent(
  ctx: VmContext,
  vm: VmRecord,
  handle: Handles,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    signal.throwIfAborted();
    try {
      return (await agentOf(ctx, vm, handle).ping(Math.min(3_000, Math.max(500, deadline - Date.now())))).version;
    } catch (error) {
      if (Date.now() > deadline) {
        throw new FailedPreconditionError(
          `the guest agent did not answer in ${timeoutMs} ms (see 'banger vm logs ${vm.name}'): ${(error as Error).message}`,
          { reason: "AGENT_NOT_READY", cause: error },
        );
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** How long setting a guest's clock may take (best effort: a guest that does not answer keeps its clock). */
const CLOCK_MS = 5_000;

/**
 * Sets a guest's clock to the host's after its vCPUs stood still (a resume, a restore): the guest's own
 * clock went on from where it stopped. Through the kit's busybox `date`; best effort: resolves with what
 * happened, for a note or the log, and never throws.
 */
export async function setGuestClock(ctx: VmContext, vm: VmRecord, handle: Handles): Promise<string> {
  if (!handle.agent) return "the guest's clock was not set: no guest agent";
  const now = ctx.now();
  try {
    const ran = await agentOf(ctx, vm, handle).run(
      "/run/banger/busybox",
      ["date", "-u", "-s", `@${Math.floor(now.getTime() / 1000)}`],
      CLOCK_MS,
    );
    if (ran.exitCode !== 0) return `the guest's clock was not set: date exited ${ran.exitCode}: ${ran.stderr.trim()}`;
    return `the guest's clock set to ${now.toISOString()}`;
  } catch (error) {
    return `the guest's clock was not set: ${error instanceof Error ? error.message : String(error)}`;
  }
}
