/**
 * `vm port add|rm`: a VM's published ports change under its lifecycle lock; a running VM's listener
 * opens or closes at once, a stopped VM's list waits for its next start. Publishes of different VMs
 * take a short lock of their own, so two cannot both take one host port.
 */
import { NotFoundError, InvalidArgumentError } from "@banger/common";
import { comparePorts, listVms, updateVm, type PublishedPort, type VmRecord } from "../../store/index.js";
import {
  MAX_PORTS_PER_VM,
  checkNoClash,
  validPortNumber,
  validProtocol,
  validPublishedPort,
  type PortRequest,
} from "../port-publishing.js";
import { createSerialLock } from "../serial-lock.js";
import type { VmContext } from "./context.js";
import type { VmView } from "./model.js";

const publishLocks = new WeakMap<VmContext, ReturnType<typeof createSerialLock>>();

/** Runs `work` under the context's publish lock (creates and port adds check and store their ports under it). */
export function underPublishLock<T>(ctx: VmContext, work: () => Promise<T>): Promise<T> {
  let lock = publishLocks.get(ctx);
  if (!lock) publishLocks.set(ctx, (lock = createSerialLock()));
  return lock(work);
}

/**
 * Checks ports a VM (`self`, or a new one) wants: valid, not clashing with each other nor with another
 * VM's, and free on the host (bound and let go). Errors as PublishVmPort's.
 */
export async function checkWantedPorts(
  ctx: VmContext,
  requests: readonly PortRequest[],
  self: VmRecord | undefined,
): Promise<PublishedPort[]> {
  const allowPrivileged = ctx.config.network.publishPrivilegedPorts;
  const wanted = requests.map((req) => validPublishedPort(req, { allowPrivileged }));
  if (wanted.length + (self?.publishedPorts.length ?? 0) > MAX_PORTS_PER_VM) {
    throw new InvalidArgumentError(`a VM publishes at most ${MAX_PORTS_PER_VM} ports`, { reason: "TOO_MANY_PORTS" });
  }
  checkNoClash(wanted, await listVms(ctx.db));
  return wanted;
}

export async function publishVmPort(ctx: VmContext, name: string, req: PortRequest): Promise<VmView> {
  const vm = await ctx.find(name);
  return ctx.runtime.lifecycle(name, () =>
    underPublishLock(ctx, async () => {
      const current = await ctx.find(name);
      const [port] = await checkWantedPorts(ctx, [req], current);
      if (port === undefined) throw new Error("unreachable: one port asked, none checked");
      const running = ctx.runtime.handles.has(vm.id);
      if (running) await ctx.relays.open(vm.id, current.guestIp, port);
      else await ctx.relays.probe(port);
      try {
        const ports = [...current.publishedPorts, port].sort(comparePorts);
        return ctx.runtime.view(await updateVm(ctx.db, name, { updatedAt: ctx.now(), publishedPorts: ports }));
      } catch (error) {
        if (running) await ctx.relays.close(vm.id, port);
        throw error;
      }
    }),
  );
}

export async function unpublishVmPort(
  ctx: VmContext,
  name: string,
  req: { hostPort: number; protocol: string; hostIp: string },
): Promise<VmView> {
  const vm = await ctx.find(name);
  const hostPort = validPortNumber(req.hostPort, "host port");
  const protocol = validProtocol(req.protocol);
  const matches = (port: PublishedPort) =>
    port.hostPort === hostPort && port.protocol === protocol && (req.hostIp === "" || port.hostIp === req.hostIp);
  return ctx.runtime.lifecycle(name, async () => {
    const current = await ctx.find(name);
    const gone = current.publishedPorts.filter(matches);
    if (gone.length === 0) {
      throw new NotFoundError(
        `VM ${name} does not publish host port ${req.hostIp ? `${req.hostIp}:` : ""}${hostPort}/${protocol}`,
        { reason: "PORT_NOT_PUBLISHED" },
      );
    }
    const updated = await updateVm(ctx.db, name, {
      updatedAt: ctx.now(),
      publishedPorts: current.publishedPorts.filter((port) => !matches(port)),
    });
    for (const port of gone) await ctx.relays.close(vm.id, port);
    return ctx.runtime.view(updated);
  });
}
