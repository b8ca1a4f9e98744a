/**
 * What `banger system uninstall` removes of banger's host network once the
 * services are stopped: links are banger's by their alias (as the helper marks
 * them), the NAT rules are its nftables table. Runs as root with ip and nft.
 */
import { LINK_ALIAS_PREFIX, NFT_TABLE } from "@banger/common/layout";
import type { SystemHost } from "./host.js";

interface Link {
  readonly ifname: string;
  readonly ifalias?: string;
}

/**
 * `pool`: the warm-pool taps only (a cache of bangerd's; VMs that still run keep
 * their taps and the bridge). `all`: every banger link, taps before the bridge,
 * and the nftables table. Returns what was removed, for the message.
 */
export function removeHostNetwork(host: SystemHost, which: "pool" | "all"): string[] {
  const listed = host.run(["ip", "-j", "link", "show"]);
  const links = listed.code === 0 ? (JSON.parse(listed.stdout || "[]") as Link[]) : [];
  const ours = links.filter((link) =>
    which === "pool" ? link.ifalias === `${LINK_ALIAS_PREFIX}pool` : link.ifalias?.startsWith(LINK_ALIAS_PREFIX),
  );
  const bridgeLast = [...ours].sort(
    (a, b) => Number(a.ifalias === `${LINK_ALIAS_PREFIX}bridge`) - Number(b.ifalias === `${LINK_ALIAS_PREFIX}bridge`),
  );
  const removed: string[] = [];
  for (const link of bridgeLast) {
    if (host.run(["ip", "link", "del", "dev", link.ifname]).code === 0) removed.push(link.ifname);
  }
  if (which === "all" && host.run(["nft", "list", "table", "ip", NFT_TABLE]).code === 0) {
    if (host.run(["nft", "delete", "table", "ip", NFT_TABLE]).code === 0)
      removed.push(`nftables table ip ${NFT_TABLE}`);
  }
  return removed;
}
