/**
 * At start-up, what the host holds is checked against the rows and each VM's
 * handles.json: a create a restart cut off is undone; a VM whose VMM still
 * runs is kept (its host features put back, paused if its VMM says so); one whose VMM died is cleaned
 * and marked stopped; directories, taps, NAT rules, VMMs and loop devices of
 * VMs that no longer exist are removed; warm-pool taps are taken back.
 */
import { existsSync } from "node:fs";
import { readFile, readdir, rm } from "node:fs/promises";
import { processIsAlive } from "@banger/common";
import { deleteVm, listVms, updateVm, type VmRecord } from "../../store/index.js";
import type { CallScope } from "../call-scope.js";
import type { HostInventory } from "../ports.js";
import type { VmContext } from "./context.js";
import { removeHostResources, removeRunDir } from "./host-cleanup.js";
import type { Handles } from "./model.js";

export async function recoverVms(ctx: VmContext): Promise<void> {
  const { host, logger, state } = ctx;
  const scope = { signal: AbortSignal.timeout(30_000) };
  let inventory: HostInventory | undefined;
  try {
    inventory = await host.inventory(scope);
  } catch (error) {
    logger.warn({ err: error }, "the privileged helper did not answer: host leftovers are checked at the next start");
  }
  const rows = await listVms(ctx.db);
  const known = new Set(rows.map((vm) => vm.id));
  for (const vm of rows) await recoverVm(ctx, vm, inventory, scope);
  // Directories of VMs that have no row (a create cut off before its row was written).
  const dirs = existsSync(state.vmsDir) ? await readdir(state.vmsDir) : [];
  for (const id of dirs.filter((entry) => !known.has(entry))) {
    await rm(state.vm(id).dir, { recursive: true, force: true });
    logger.warn({ id }, "removed the directory of a VM that does not exist");
  }
  if (!inventory) return;
  await recoverPoolTaps(ctx, inventory, scope);
  // banger's resources that belong to no VM at all.
  const orphans = new Set<string>([
    ...inventory.taps.map((t) => t.vmId),
    ...inventory.natRules.map((r) => r.vmId),
    ...inventory.vmms.map((v) => v.vmId),
    ...inventory.loops.map((l) => state.vmIdOf(l.backingFile)).filter((id): id is string => id !== undefined),
  ]);
  for (const id of orphans) {
    if (known.has(id)) continue;
    await removeHostResources(ctx, id, inventory, scope);
    await rm(state.vm(id).dir, { recursive: true, force: true });
    logger.warn({ id }, "removed host resources left by a VM that no longer exists");
  }
  // Their runtime directories (VMM sockets and logs), once their VMMs are gone: those of the state
  // directories just removed and of the orphans (`<runtime>/vms` is root's: the owner cannot list it).
  for (const id of new Set([...dirs, ...orphans].filter((entry) => !known.has(entry)))) {
    await removeRunDir(ctx, id, scope).catch((error: unknown) =>
      logger.error({ id, err: error }, "could not remove a runtime directory"),
    );
  }
  await removeUnusedImageLoops(ctx, inventory, scope);
}

/** One VM with a row: undone (cut-off create), kept (VMM alive), or cleaned and marked stopped. */
async function recoverVm(
  ctx: VmContext,
  vm: VmRecord,
  inventory: HostInventory | undefined,
  scope: CallScope,
): Promise<void> {
  const { host, logger } = ctx;
  const paths = ctx.state.vm(vm.id);
  if (existsSync(paths.creatingMarker)) {
    // A create cut off by the restart (its operation is INTERRUPTED): undo all of it.
    if (inventory) await removeHostResources(ctx, vm.id, inventory, scope);
    await rm(paths.dir, { recursive: true, force: true });
    await removeRunDir(ctx, vm.id, scope).catch(() => undefined);
    await deleteVm(ctx.db, vm.name);
    logger.warn({ vm: vm.name, id: vm.id }, "removed a VM whose create a restart cut off");
    return;
  }
  let stored: Handles | undefined;
  try {
    stored = JSON.parse(await readFile(paths.handles, "utf8")) as Handles;
  } catch {
    stored = undefined;
  }
  if (!stored) return;
  const pid = stored.pid;
  // Without the helper's inventory only "some process has that pid" can be known (bangerd's unit
  // cannot read the VMM's /proc): keep the VM rather than lose a running one; the helper proves it later.
  const alive = inventory ? inventory.vmms.some((vmm) => vmm.vmId === vm.id && vmm.pid === pid) : processIsAlive(pid);
  if (alive) {
    await ctx.runtime.saveHandles(vm, await withPausedState(ctx, vm, stored));
    // Its DNS name, NAT rule, … are put back (postStart hooks are idempotent).
    await ctx
      .eachCapability(false, (c) => c.postStart?.(vm, scope))
      .catch((error: unknown) =>
        logger.warn({ vm: vm.name, err: error }, "could not restore a running VM's host features"),
      );
    logger.info(
      { vm: vm.name, pid, paused: ctx.runtime.handles.get(vm.id)?.paused === true },
      "VM still running: kept",
    );
    return;
  }
  if (inventory) await removeHostResources(ctx, vm.id, inventory, scope);
  // A dm-snapshot VM's image loop is backed by the image's file, not one of the VM's: its handles name it.
  for (const loop of (inventory ? stored.root?.loops : undefined) ?? []) {
    if (!inventory?.loops.some((l) => l.device === loop.device && l.backingFile === loop.backingFile)) continue;
    await host
      .detachLoop(loop.device, loop.backingFile, scope)
      .catch((error: unknown) => logger.error({ vm: vm.name, err: error }, "could not remove a loop device"));
  }
  await rm(paths.handles, { force: true });
  await updateVm(ctx.db, vm.name, { updatedAt: ctx.now(), desiredState: "stopped" });
  logger.warn({ vm: vm.name, pid }, "VM's VMM died while the orchestrator was away: cleaned up, marked stopped");
}

/**
 * The handles of a VM whose VMM still runs, with `paused` as the VMM says now
 * (a pause or resume the restart cut off may have reached the VMM and not the
 * file); as stored when the VMM does not answer.
 */
async function withPausedState(ctx: VmContext, vm: VmRecord, stored: Handles): Promise<Handles> {
  try {
    const paused = await ctx.vmm.drivers[vm.vmm].paused(stored.controlSocket);
    const { paused: _was, ...rest } = stored;
    return paused ? { ...rest, paused } : rest;
  } catch (error) {
    ctx.logger.warn({ vm: vm.name, err: error }, "could not ask the VMM whether the guest is paused");
    return stored;
  }
}

/**
 * Warm-pool taps made for this owner are taken into the pool; one made for another uid (an earlier
 * owner's) cannot be opened by this owner's VMMs: it is deleted, and the pool makes new ones.
 */
async function recoverPoolTaps(ctx: VmContext, inventory: HostInventory, scope: CallScope): Promise<void> {
  const { host, logger } = ctx;
  for (const tap of inventory.poolTaps) {
    if (inventory.ownerUid === undefined || tap.ownerUid === inventory.ownerUid) {
      ctx.net.adoptPoolTap(tap.name);
      continue;
    }
    await host
      .deletePoolTap(tap.name, scope)
      .then(() =>
        logger.warn(
          { tap: tap.name, tap_owner: tap.ownerUid, owner: inventory.ownerUid },
          "deleted a warm-pool tap made for another uid than the helper's owner",
        ),
      )
      .catch((error: unknown) => logger.error({ tap: tap.name, err: error }, "could not delete a warm-pool tap"));
  }
}

/** Image loops under no running VM's root device (a dm-snapshot create or stop cut off). */
async function removeUnusedImageLoops(ctx: VmContext, inventory: HostInventory, scope: CallScope): Promise<void> {
  const { host, logger, state } = ctx;
  const inUse = new Set([...ctx.runtime.handles.values()].flatMap((h) => h.root?.loops.map((l) => l.device) ?? []));
  for (const loop of inventory.loops) {
    if (inUse.has(loop.device) || state.vmIdOf(loop.backingFile) !== undefined) continue;
    if (!loop.backingFile.startsWith(`${state.imagesDir}/`)) continue; // images.ts keeps them there
    await host
      .detachLoop(loop.device, loop.backingFile, scope)
      .then(() => logger.warn({ device: loop.device }, "removed an image's loop device that no VM uses"))
      .catch((error: unknown) => logger.error({ err: error }, "could not remove a loop device"));
  }
}
