/**
 * Removing what the host still holds for a VM that is gone or going: its
 * runtime directory, and whatever the helper's inventory lists for it. Used
 * by a failed create and by recovery at start-up.
 */
import { FailedPreconditionError } from "@banger/common";
import type { CallScope } from "../call-scope.js";
import type { HostInventory } from "../ports.js";
import type { VmContext } from "./context.js";
import { SharedReason } from "@banger/common/reasons";

/**
 * Removes a VM's runtime directory (VMM sockets and logs) through the helper, as `<runtime>/vms` is root's.
 * A VMM just killed may take a moment to be gone: VMM_RUNNING is retried for up to 3 s.
 */
export async function removeRunDir(ctx: VmContext, id: string, scope: CallScope): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await ctx.host.removeVmmFiles(id, scope);
      return;
    } catch (error) {
      if (!(error instanceof FailedPreconditionError) || error.reason !== SharedReason.VMM_RUNNING || attempt >= 30)
        throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

/** Everything the inventory lists for VM `id`: its VMM, tap, NAT rule and loop devices. Best effort, logged. */
export async function removeHostResources(
  ctx: VmContext,
  id: string,
  inventory: HostInventory,
  scope: CallScope,
): Promise<void> {
  const { host, logger, state } = ctx;
  const attempt = async (what: string, work: () => Promise<unknown>) => {
    try {
      await work();
    } catch (error) {
      logger.error({ id, err: error }, `could not remove ${what}`);
    }
  };
  for (const vmm of inventory.vmms.filter((v) => v.vmId === id)) {
    await attempt("a VMM", () => host.signalVmm(id, vmm.pid, vmm.startTime, "kill", scope));
  }
  if (inventory.taps.some((t) => t.vmId === id)) await attempt("a tap", () => host.deleteTap(id, scope));
  if (inventory.natRules.some((r) => r.vmId === id)) await attempt("a NAT rule", () => host.disableNat(id, scope));
  if (inventory.snapshots.some((s) => s.vmId === id)) {
    await attempt("a dm-snapshot", () => host.removeSnapshot(id, scope));
  }
  for (const loop of inventory.loops.filter((l) => state.vmIdOf(l.backingFile) === id)) {
    await attempt("a loop device", () => host.detachLoop(loop.device, loop.backingFile, scope));
  }
}
