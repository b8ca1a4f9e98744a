/**
 * banger's links as `ip` shows them, and the one way one is made: every step in one `ip -batch`,
 * the link marked with banger's alias, deleted again if a step fails.
 */
import { FailedPreconditionError, InvalidArgumentError, PermissionDeniedError } from "@banger/common/errors";
import { uidOf } from "../../host/passwd.js";
import { ALIAS_PREFIX, validBridgeName } from "../../validate/ids.js";
import { contains, parseHostCidr, type Ipv4, type Ipv4Cidr } from "../../validate/ipv4.js";
import type { LinkInfo, LinkKind, NetworkDeps } from "./types.js";

export interface IpLink {
  ifname: string;
  ifalias?: string;
  flags?: string[];
  master?: string;
  linkinfo?: { info_kind?: string; info_data?: { type?: string; user?: number | string } };
  addr_info?: { family: string; local: string; prefixlen: number }[];
}

export function ip(deps: NetworkDeps, ...args: string[]) {
  return deps.runner.run(["ip", ...args]);
}

export async function rawLinks(deps: NetworkDeps): Promise<IpLink[]> {
  const { stdout } = await deps.runner.run(["ip", "-j", "-d", "addr", "show"]);
  return JSON.parse(stdout || "[]") as IpLink[];
}

export function toInfo(link: IpLink): LinkInfo | undefined {
  const alias = link.ifalias ?? "";
  if (!alias.startsWith(ALIAS_PREFIX) || !link.ifname.startsWith("bgr")) return undefined;
  const kind: LinkKind = link.linkinfo?.info_kind === "bridge" ? "bridge" : "tap";
  return {
    name: link.ifname,
    kind,
    vmId: alias.startsWith(`${ALIAS_PREFIX}tap:`) ? alias.slice(`${ALIAS_PREFIX}tap:`.length) : "",
    ownerUid: uidOf(link.linkinfo?.info_data?.user),
    master: link.master ?? "",
    addresses: (link.addr_info ?? []).filter((a) => a.family === "inet").map((a) => `${a.local}/${a.prefixlen}`),
    up: (link.flags ?? []).includes("UP"),
  };
}

export async function findLink(deps: NetworkDeps, name: string): Promise<IpLink | undefined> {
  return (await rawLinks(deps)).find((l) => l.ifname === name);
}

/** The bridge `name`, which must exist and be banger's. */
export async function bangerBridge(deps: NetworkDeps, name: string): Promise<{ link: IpLink; cidr: Ipv4Cidr }> {
  validBridgeName(name);
  return bangerBridgeIn(await rawLinks(deps), name);
}

/** bangerBridge, found in a listing the caller already has (one `ip` run for all it checks). */
export function bangerBridgeIn(links: readonly IpLink[], name: string): { link: IpLink; cidr: Ipv4Cidr } {
  const bridgeName = validBridgeName(name);
  const link = links.find((l) => l.ifname === bridgeName);
  if (!link) throw new FailedPreconditionError(`bridge ${name} does not exist`, { reason: "BRIDGE_ABSENT" });
  if (link.ifalias !== `${ALIAS_PREFIX}bridge`) {
    throw new PermissionDeniedError(`link ${name} exists but banger did not make it`, { reason: "NOT_BANGERS" });
  }
  const inet = (link.addr_info ?? []).find((a) => a.family === "inet");
  if (!inet) throw new FailedPreconditionError(`bridge ${name} has no IPv4 address`, { reason: "BRIDGE_MISMATCH" });
  return { link, cidr: parseHostCidr(`${inet.local}/${inet.prefixlen}`, "bridge address", 0, 32) };
}

/** `guest` as a guest address of bridge `bridge` (its subnet, not the bridge's own), or ADDRESS_OUTSIDE_BRIDGE. */
export function requireGuestAddress(cidr: Ipv4Cidr, guest: Ipv4, bridge: string): void {
  if (!contains(cidr, guest.value) || guest.value === cidr.address.value) {
    throw new InvalidArgumentError(`guest_address ${guest.text} is not a guest address of bridge ${bridge}`, {
      reason: "ADDRESS_OUTSIDE_BRIDGE",
    });
  }
}

/** Creates a tap owned by the owner, marks it, attaches it to the bridge and brings it up. */
export async function makeTap(deps: NetworkDeps, name: string, alias: string, bridge: string): Promise<void> {
  await createLink(deps, name, [
    ["tuntap", "add", "dev", name, "mode", "tap", "user", String(deps.config.ownerUid)],
    ["link", "set", "dev", name, "alias", alias],
    ["link", "set", "dev", name, "master", bridge],
    ["link", "set", "dev", name, "up"],
  ]);
}

/**
 * Runs the steps that make link `name` as one `ip -batch` process, so a
 * helper killed mid-way cannot leave a link without banger's mark (the
 * child finishes the batch). If a step fails, the link is deleted again.
 */
export async function createLink(deps: NetworkDeps, name: string, steps: string[][]): Promise<void> {
  try {
    await ipBatch(deps, steps);
  } catch (error) {
    if (await findLink(deps, name)) {
      await ip(deps, "link", "del", "dev", name).catch((undoError: unknown) => {
        if (error instanceof Error) error.message += ` (and deleting ${name} again failed: ${String(undoError)})`;
      });
    }
    throw error;
  }
}

/** `ip -batch -`: stops at the first failing line. Every word was validated (no spaces, quotes or newlines). */
export function ipBatch(deps: NetworkDeps, lines: readonly string[][]) {
  return deps.runner.run(["ip", "-batch", "-"], { stdin: lines.map((words) => words.join(" ")).join("\n") + "\n" });
}
