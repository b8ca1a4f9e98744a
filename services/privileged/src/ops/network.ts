/**
 * Bridge, taps, NAT and `.vm` resolver routing. Every link banger makes is
 * marked with an alias (`banger:bridge`, `banger:tap:<vm_id>`, `banger:pool`);
 * a link without banger's mark is never changed or deleted. Requests are
 * validated completely before the first host command runs.
 */
import { randomBytes } from "node:crypto";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  PermissionDeniedError,
} from "@banger/common";
import type { HelperConfig } from "../config.js";
import { uidOf } from "../host/passwd.js";
import { NFT_TABLE, type Runner } from "@banger/common";
import { ALIAS_PREFIX, DEVICE_PREFIX, tapName, validBridgeName, validVmId } from "../validate/ids.js";
import { contains, parseHostCidr, parseIpv4, routeRange, type Ipv4Cidr } from "../validate/ipv4.js";
import { withUndo } from "./undo.js";

export type LinkKind = "bridge" | "tap";

/** A link banger made, with only the fields that stay the same while nothing changes it. */
export interface LinkInfo {
  readonly name: string;
  readonly kind: LinkKind;
  /** The VM a tap belongs to; empty for the bridge and warm-pool taps. */
  readonly vmId: string;
  readonly ownerUid: number;
  readonly master: string;
  /** IPv4 addresses in CIDR form. */
  readonly addresses: readonly string[];
  readonly up: boolean;
}

export interface NatRuleInfo {
  readonly vmId: string;
  readonly guestAddress: string;
}

export interface NetworkOps {
  ensureBridge(req: { name: string; address: string }): Promise<{ created: boolean }>;
  deleteBridge(req: { name: string }): Promise<{ existed: boolean }>;
  createTap(req: { vmId: string; bridge: string; pool: boolean; fromPool: string }): Promise<{ name: string }>;
  deleteTap(req: { vmId: string; poolName: string }): Promise<{ existed: boolean }>;
  enableNat(req: { vmId: string; guestAddress: string; bridge: string }): Promise<{ added: boolean }>;
  disableNat(req: { vmId: string }): Promise<{ removed: boolean }>;
  configureResolver(req: { bridge: string; dnsAddress: string }): Promise<void>;
  removeResolver(req: { bridge: string }): Promise<{ existed: boolean }>;
  listLinks(): Promise<LinkInfo[]>;
  listNatRules(): Promise<NatRuleInfo[]>;
}

export interface NetworkDeps {
  readonly runner: Runner;
  readonly config: HelperConfig;
  /** Whether systemd-resolved runs (host feature probe). */
  readonly resolvedPresent: () => boolean;
}

/** banger's nftables chain (in common's NFT_TABLE). */
const NFT_CHAIN = "postrouting";
const POOL_NAME = /^bgr-p[0-9a-f]{10}$/;

interface IpLink {
  ifname: string;
  ifalias?: string;
  flags?: string[];
  master?: string;
  linkinfo?: { info_kind?: string; info_data?: { type?: string; user?: number | string } };
  addr_info?: { family: string; local: string; prefixlen: number }[];
}

interface NftRule {
  rule?: { table: string; chain: string; handle: number; comment?: string; expr?: unknown[] };
}

export function createNetworkOps(deps: NetworkDeps): NetworkOps {
  const { runner, config } = deps;
  const ip = (...args: string[]) => runner.run(["ip", ...args]);

  async function rawLinks(): Promise<IpLink[]> {
    const { stdout } = await runner.run(["ip", "-j", "-d", "addr", "show"]);
    return JSON.parse(stdout || "[]") as IpLink[];
  }

  function toInfo(link: IpLink): LinkInfo | undefined {
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

  async function findLink(name: string): Promise<IpLink | undefined> {
    return (await rawLinks()).find((l) => l.ifname === name);
  }

  /** The bridge `name`, which must exist and be banger's. */
  async function bangerBridge(name: string): Promise<{ link: IpLink; cidr: Ipv4Cidr }> {
    const link = await findLink(validBridgeName(name));
    if (!link) throw new FailedPreconditionError(`bridge ${name} does not exist`, { reason: "BRIDGE_ABSENT" });
    if (link.ifalias !== `${ALIAS_PREFIX}bridge`) {
      throw new PermissionDeniedError(`link ${name} exists but banger did not make it`, { reason: "NOT_BANGERS" });
    }
    const inet = (link.addr_info ?? []).find((a) => a.family === "inet");
    if (!inet) throw new FailedPreconditionError(`bridge ${name} has no IPv4 address`, { reason: "BRIDGE_MISMATCH" });
    return { link, cidr: parseHostCidr(`${inet.local}/${inet.prefixlen}`, "bridge address", 0, 32) };
  }

  async function natRules(): Promise<{ handle: number; vmId: string; guestAddress: string }[]> {
    let stdout: string;
    try {
      ({ stdout } = await runner.run(["nft", "-j", "list", "table", "ip", NFT_TABLE]));
    } catch {
      return []; // no table: no rules
    }
    const items = (JSON.parse(stdout) as { nftables?: NftRule[] }).nftables ?? [];
    return items.flatMap(({ rule }) => {
      if (!rule?.comment?.startsWith("vm:")) return [];
      const address = JSON.stringify(rule.expr ?? []).match(/"right":"(\d+\.\d+\.\d+\.\d+)"/)?.[1] ?? "";
      return [{ handle: rule.handle, vmId: rule.comment.slice(3), guestAddress: address }];
    });
  }

  return {
    async ensureBridge(req) {
      const name = validBridgeName(req.name);
      const cidr = parseHostCidr(req.address, "address", 16, 30);
      const wanted = `${cidr.address.text}/${cidr.prefix}`;
      const existing = await findLink(name);
      if (existing) {
        const { link } = await bangerBridge(name);
        const has = (link.addr_info ?? []).filter((a) => a.family === "inet").map((a) => `${a.local}/${a.prefixlen}`);
        if (!has.includes(wanted)) {
          throw new FailedPreconditionError(
            `bridge ${name} exists with ${has.join(", ") || "no address"}, not ${wanted}`,
            {
              reason: "BRIDGE_MISMATCH",
            },
          );
        }
        if (!(link.flags ?? []).includes("UP")) await ip("link", "set", "dev", name, "up");
        return { created: false };
      }
      const { stdout } = await runner.run(["ip", "-j", "-4", "route", "show", "table", "all"]);
      for (const route of JSON.parse(stdout || "[]") as { dst: string; type?: string }[]) {
        if (route.type === "broadcast" || route.type === "local") continue;
        const range = routeRange(route.dst);
        if (range && range[0] <= cidr.broadcast && cidr.network <= range[1]) {
          throw new FailedPreconditionError(`${wanted} overlaps the existing route ${route.dst}`, {
            reason: "SUBNET_OVERLAPS",
          });
        }
      }
      await createLink(name, [
        ["link", "add", "name", name, "type", "bridge"],
        ["link", "set", "dev", name, "alias", `${ALIAS_PREFIX}bridge`],
        ["addr", "add", wanted, "dev", name],
        ["link", "set", "dev", name, "up"],
      ]);
      return { created: true };
    },

    async deleteBridge(req) {
      const name = validBridgeName(req.name);
      const links = await rawLinks();
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
      await ip("link", "del", "dev", name);
      return { existed: true };
    },

    async createTap(req) {
      const bridgeName = validBridgeName(req.bridge);
      if (req.pool) {
        if (req.vmId !== "" || req.fromPool !== "") {
          throw new InvalidArgumentError("a pool tap takes no vm_id or from_pool", { reason: "INVALID_ARGUMENT" });
        }
        await bangerBridge(bridgeName);
        const name = `${DEVICE_PREFIX}p${randomBytes(5).toString("hex")}`;
        await makeTap(name, `${ALIAS_PREFIX}pool`, bridgeName);
        return { name };
      }
      const vmId = validVmId(req.vmId);
      const name = tapName(vmId);
      const alias = `${ALIAS_PREFIX}tap:${vmId}`;
      if (req.fromPool !== "" && !POOL_NAME.test(req.fromPool)) {
        throw new InvalidArgumentError(`from_pool must match ${POOL_NAME.source}`, { reason: "INVALID_POOL_NAME" });
      }
      await bangerBridge(bridgeName);
      const links = await rawLinks();
      const existing = links.find((l) => l.ifname === name);
      if (existing) {
        if (existing.ifalias === alias) return { name }; // already there: idempotent
        if (existing.ifalias?.startsWith(ALIAS_PREFIX)) {
          throw new AlreadyExistsError(`tap ${name} belongs to another VM`, { reason: "TAP_EXISTS" });
        }
        throw new PermissionDeniedError(`link ${name} exists but banger did not make it`, { reason: "NOT_BANGERS" });
      }
      if (req.fromPool === "") {
        await makeTap(name, alias, bridgeName);
        return { name };
      }
      const pooled = links.find((l) => l.ifname === req.fromPool);
      if (pooled?.ifalias !== `${ALIAS_PREFIX}pool`) {
        throw new FailedPreconditionError(`${req.fromPool} is not a warm-pool tap`, { reason: "NOT_IN_POOL" });
      }
      // Made for another owner (an earlier helper's): this owner's VMM could not open it.
      const madeFor = uidOf(pooled.linkinfo?.info_data?.user);
      if (madeFor !== config.ownerUid) {
        throw new FailedPreconditionError(
          `${req.fromPool} was made for uid ${madeFor}, not for the owner (uid ${config.ownerUid})`,
          { reason: "NOT_IN_POOL" },
        );
      }
      const from = req.fromPool;
      try {
        await ipBatch([
          ["link", "set", "dev", from, "down"],
          ["link", "set", "dev", from, "name", name],
          ["link", "set", "dev", name, "alias", alias],
          ["link", "set", "dev", name, "up"],
        ]);
      } catch (error) {
        // Put the pool tap back as it was, whichever step failed.
        const now = await rawLinks();
        const undo: string[][] = [];
        if (now.some((l) => l.ifname === name)) {
          undo.push(["link", "set", "dev", name, "down"], ["link", "set", "dev", name, "name", from]);
        }
        undo.push(["link", "set", "dev", from, "alias", `${ALIAS_PREFIX}pool`], ["link", "set", "dev", from, "up"]);
        await ipBatch(undo).catch((undoError: unknown) => {
          if (error instanceof Error) error.message += ` (and restoring ${from} failed: ${String(undoError)})`;
        });
        throw error;
      }
      return { name };
    },

    async deleteTap(req) {
      let name: string;
      let alias: string;
      if (req.poolName !== "") {
        if (req.vmId !== "" || !POOL_NAME.test(req.poolName)) {
          throw new InvalidArgumentError(`pool_name must match ${POOL_NAME.source}, without vm_id`, {
            reason: "INVALID_POOL_NAME",
          });
        }
        name = req.poolName;
        alias = `${ALIAS_PREFIX}pool`;
      } else {
        const vmId = validVmId(req.vmId);
        name = tapName(vmId);
        alias = `${ALIAS_PREFIX}tap:${vmId}`;
      }
      const link = await findLink(name);
      if (!link) return { existed: false };
      if (link.ifalias !== alias) {
        throw new PermissionDeniedError(`link ${name} is not this VM's tap`, { reason: "NOT_BANGERS" });
      }
      await ip("link", "del", "dev", name);
      return { existed: true };
    },

    async enableNat(req) {
      const vmId = validVmId(req.vmId);
      const guest = parseIpv4(req.guestAddress, "guest_address");
      const { cidr } = await bangerBridge(req.bridge);
      if (!contains(cidr, guest.value) || guest.value === cidr.address.value) {
        throw new InvalidArgumentError(`guest_address ${guest.text} is not a guest address of bridge ${req.bridge}`, {
          reason: "ADDRESS_OUTSIDE_BRIDGE",
        });
      }
      const rules = await natRules();
      const mine = rules.filter((r) => r.vmId === vmId);
      if (mine.length === 1 && mine[0]?.guestAddress === guest.text) return { added: false };
      const script = [
        `table ip ${NFT_TABLE} {`,
        `  chain ${NFT_CHAIN} { type nat hook postrouting priority srcnat; policy accept; }`,
        `}`,
        ...mine.map((r) => `delete rule ip ${NFT_TABLE} ${NFT_CHAIN} handle ${r.handle}`),
        `add rule ip ${NFT_TABLE} ${NFT_CHAIN} ip saddr ${guest.text} oifname != "${req.bridge}" masquerade comment "vm:${vmId}"`,
      ].join("\n");
      await runner.run(["nft", "-f", "-"], { stdin: `${script}\n` });
      return { added: true };
    },

    async disableNat(req) {
      const vmId = validVmId(req.vmId);
      const rules = await natRules();
      const mine = rules.filter((r) => r.vmId === vmId);
      if (mine.length === 0) return { removed: false };
      // Removing the last rule removes the table: no empty table is left behind.
      const script =
        mine.length === rules.length
          ? `delete table ip ${NFT_TABLE}`
          : mine.map((r) => `delete rule ip ${NFT_TABLE} ${NFT_CHAIN} handle ${r.handle}`).join("\n");
      await runner.run(["nft", "-f", "-"], { stdin: `${script}\n` });
      return { removed: true };
    },

    async configureResolver(req) {
      const { cidr } = await bangerBridge(req.bridge);
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
        await runner.run(["resolvectl", "dns", req.bridge, dns.text]);
        onUndo(() => runner.run(["resolvectl", "revert", req.bridge]));
        await runner.run(["resolvectl", "domain", req.bridge, "~vm"]);
      });
    },

    async removeResolver(req) {
      const name = validBridgeName(req.bridge);
      if (!deps.resolvedPresent() || !(await findLink(name))) return { existed: false };
      await bangerBridge(name);
      await runner.run(["resolvectl", "revert", name]);
      return { existed: true };
    },

    async listLinks() {
      const infos = (await rawLinks()).flatMap((l) => toInfo(l) ?? []);
      return infos.sort((a, b) => a.name.localeCompare(b.name));
    },

    async listNatRules() {
      return (await natRules()).map(({ vmId, guestAddress }) => ({ vmId, guestAddress }));
    },
  };

  /** Creates a tap owned by the owner, marks it, attaches it to the bridge and brings it up. */
  async function makeTap(name: string, alias: string, bridge: string): Promise<void> {
    await createLink(name, [
      ["tuntap", "add", "dev", name, "mode", "tap", "user", String(config.ownerUid)],
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
  async function createLink(name: string, steps: string[][]): Promise<void> {
    try {
      await ipBatch(steps);
    } catch (error) {
      if (await findLink(name)) {
        await ip("link", "del", "dev", name).catch((undoError: unknown) => {
          if (error instanceof Error) error.message += ` (and deleting ${name} again failed: ${String(undoError)})`;
        });
      }
      throw error;
    }
  }

  /** `ip -batch -`: stops at the first failing line. Every word was validated (no spaces, quotes or newlines). */
  function ipBatch(lines: readonly string[][]) {
    return runner.run(["ip", "-batch", "-"], { stdin: lines.map((words) => words.join(" ")).join("\n") + "\n" });
  }
}
