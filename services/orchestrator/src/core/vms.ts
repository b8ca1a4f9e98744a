/**
 * The VM lifecycle: create (stages, each undone in reverse when a later one
 * fails), start, stop, restart, delete, set, and what a VM is now.
 *
 * Durable vs transient: the row says what a VM is; what is currently true on
 * the host (the VMM's pid and start time, the tap, the NAT rule) lives in
 * memory and in `<state>/vms/<id>/handles.json`, and is checked against the
 * host at start-up (see `recover`). Locks: one lifecycle lock per VM, and a
 * short reservation lock (name, addresses, row) for creates; the slow stages
 * of different VMs overlap.
 *
 * This module wires the parts in vm/ together:
 * - context.ts: the dependencies, the layout and the runtime state every part works with
 * - runtime.ts: handles, phases, running creates, the locks; network.ts: the bridge and warm tap pool;
 *   choices.ts: this host's root-disk strategy and VMM for new VMs
 * - create.ts: the create pipeline and its undo (undo.ts), root-disk.ts, boot.ts
 * - lifecycle.ts: start, stop, restart, delete; halt.ts: stopping a VMM; agent.ts: the guest agent;
 *   pause.ts: pause and resume; saved-state.ts: stop --save; snapshot.ts: snapshots of running VMs
 * - publish.ts: published ports (port-publishing.ts: their checks, relays and capability)
 * - settings.ts: SetVm and pending changes; promote.ts; inspect.ts: logs, stats, ssh and Exec targets
 * - recovery.ts (with host-cleanup.ts): what the host holds, checked at start-up
 * - result.ts: a VM operation's result (the VM as it is now)
 */
import type { VmmPorts } from "./ports.js";
import { observe } from "./vm/agent.js";
import { createVmContext, type VmServiceDeps } from "./vm/context.js";
import { createVm } from "./vm/create.js";
import { forkVm } from "./vm/fork.js";
import { vmGuestTarget, vmLogs, vmSshTarget, vmStats } from "./vm/inspect.js";
import { deleteVmByName, restartVm, startVm, stopVm } from "./vm/lifecycle.js";
import { pauseVm, resumeVm } from "./vm/pause.js";
import { deleteSnapshotByName, getSnapshotView, listSnapshotViews, snapshotVm } from "./vm/snapshot.js";
import type { VmService } from "./vm/model.js";
import { promoteVm } from "./vm/promote.js";
import { publishVmPort, unpublishVmPort } from "./vm/publish.js";
import { recoverVms } from "./vm/recovery.js";
import { setVm } from "./vm/settings.js";
import { listVms } from "../store/index.js";

export type { AgentHealthName, CreateVmRequest, VmService, VmStateName, VmView } from "./vm/model.js";
export { validVmName } from "./vm/model.js";
export type { VmServiceDeps } from "./vm/context.js";
export type { GuestPort } from "./ports.js";

/** The VM service over its ports; the VMM drivers come built from the composition root (createVmmPorts). */
export function createVmService(deps: VmServiceDeps & { readonly vmm: VmmPorts }): VmService {
  const ctx = createVmContext(deps, deps.vmm);
  return {
    create: (req) => (req.fromSnapshot ? forkVm(ctx, req) : createVm(ctx, req)),
    start: (name, options) => startVm(ctx, name, options),
    stop: (name, options) => stopVm(ctx, name, options),
    restart: (name, options) => restartVm(ctx, name, options),
    delete: (name) => deleteVmByName(ctx, name),
    set: (name, change) => setVm(ctx, name, change),
    list: async () => Promise.all((await listVms(ctx.db)).map((vm) => observe(ctx, vm))),
    get: async (name) => observe(ctx, await ctx.find(name)),
    logs: (name, options) => vmLogs(ctx, name, options),
    stats: (name) => vmStats(ctx, name),
    guestTarget: (name) => vmGuestTarget(ctx, name),
    sshTarget: (name) => vmSshTarget(ctx, name),
    promote: (vmName, imageName) => promoteVm(ctx, vmName, imageName),
    publishPort: (name, port) => publishVmPort(ctx, name, port),
    unpublishPort: (name, port) => unpublishVmPort(ctx, name, port),
    pause: (name) => pauseVm(ctx, name),
    resume: (name) => resumeVm(ctx, name),
    snapshot: (name, as) => snapshotVm(ctx, name, as),
    listSnapshots: () => listSnapshotViews(ctx),
    getSnapshot: (name) => getSnapshotView(ctx, name),
    deleteSnapshot: (name) => deleteSnapshotByName(ctx, name),
    recover: () => recoverVms(ctx),
    closeConnections: () => ctx.connections.close(),
  };
}
