/** banger's bridge, and the `.vm` resolver route on it (systemd-resolved). */
import { FailedPreconditionError, InvalidArgumentError, PermissionDeniedError } from "@banger/common/errors";
import { withUndo } from "../undo.js";
import { ALIAS_PREFIX, validBridgeName } from "../../validate/ids.js";
import { parseHostCidr, parseIpv4, routeRange } from "../../validate/ipv4.js";
import type { NetworkDeps } from "./types.js";
import { bangerBridge, createLink, findLink, ip, rawLinks } from "./links.js";

export async function ensureBridge(
  deps: NetworkDeps,
  req: { name: string; address: string },
): Promise<{ created: boolean }> {
  const name = validBridgeName(req.name);
  const cidr = parseHostCidr(req.address, "address", 16, 30);
  const wanted = `${cidr.address.text}/${cidr.prefix}`;
  const existing = await findLink(deps, name);
  if (existing) {
    const { link } = await bangerBridge(deps, name);
    const has = (link.addr_info ?? []).filter((a) => a.family === "inet").map((a) => `${a.local}/${a.prefixlen}`);
    if (!has.includes(wanted)) {
      throw new FailedPreconditionError(`bridge ${name} exists with ${has.join(", ") || "no address"}, not ${wanted}`, {
        reason: "BRIDGE_MISMATCH",
      });
    }
    if (!(link.flags ?? []).includes("UP")) await ip(deps, "link", "set", "dev", name, "up");
    return { created: false };
  }
  const { stdout } = await deps.runner.run(["ip", "-j", "-4", "route", "show", "table", "all"]);
  for (const route of JSON.parse(stdout || "[]") as { dst: string; type?: string }[]) {
    if (route.type === "broadcast" || route.type === "local") continue;
    const range = routeRange(route.dst);
    if (range && range[0] <= cidr.broadcast && cidr.network <= range[1]) {
      throw new FailedPreconditionError(`${wanted} overlaps the existing route ${route.dst}`, {
        reason: "SUBNET_OVERLAPS",
      });
    }
  }
  await createLink(deps, name, [
    ["link", "add", "name", name, "type", "bridge"],
    ["link", "set", "dev", name, "alias", `${ALIAS_PREFIX}bridge`],
    ["addr", "add", wanted, "dev", name],
    ["link", "set", "dev", name, "up"],
  ]);
  return { created: true };
}

export async function deleteBridge(deps: NetworkDeps, req: { name: string }): Promise<{ existed: boolean }> {
  const name = validBridgeName(req.name);
  const links = await rawLinks(deps);
  const link = links.find((l) => l.ifname === name);
  if (!link) return { existed: false };
  if (link.ifalias !== `${ALIAS_PREFIX}bridge`) {
    throw new PermissionDeniedError(`link ${name} exists but banger did not make it`, { reason: "NOT_BANGERS" });
  }
  const attached = links.filter((l) => l.master === name).map((l) => l.ifname);
  if (attached.length > 0) {
    throw new FailedPreconditionError(`bridge ${name} still has ${attached.join(", ")} attached`, {
      reason: "BRIDGE_IN_USE",
    });
  }
  await ip(deps, "link", "del", "dev", name);
  return { existed: true };
}

export async function configureResolver(deps: NetworkDeps, req: { bridge: string; dnsAddress: string }): Promise<void> {
  const { cidr } = await bangerBridge(deps, req.bridge);
  const dns = parseIpv4(req.dnsAddress, "dns_address");
  if (dns.value !== cidr.address.value) {
    throw new InvalidArgumentError("dns_address must be the bridge's own address", { reason: "INVALID_ADDRESS" });
  }
  if (!deps.resolvedPresent()) {
    throw new FailedPreconditionError("systemd-resolved is not running: .vm names cannot be routed to banger", {
      reason: "RESOLVED_ABSENT",
    });
  }
  await withUndo(async (onUndo) => {
    await deps.runner.run(["resolvectl", "dns", req.bridge, dns.text]);
    onUndo(() => deps.runner.run(["resolvectl", "revert", req.bridge]));
    await deps.runner.run(["resolvectl", "domain", req.bridge, "~vm"]);
  });
}

export async function removeResolver(deps: NetworkDeps, req: { bridge: string }): Promise<{ existed: boolean }> {
  const name = validBridgeName(req.bridge);
  if (!deps.resolvedPresent() || !(await findLink(deps, name))) return { existed: false };
  await bangerBridge(deps, name);
  await deps.runner.run(["resolvectl", "revert", name]);
  return { existed: true };
}
