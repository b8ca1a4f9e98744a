/** The NAT rules in banger's nftables table: one masquerade rule per VM, marked `vm:<vm_id>`. */
import { NFT_TABLE } from "@banger/common/layout";
import { validVmId } from "../../validate/ids.js";
import { parseIpv4 } from "../../validate/ipv4.js";
import type { NatRuleInfo, NetworkDeps } from "./types.js";
import { bangerBridge, requireGuestAddress } from "./links.js";

/** banger's nftables chain (in common's NFT_TABLE). */
const NFT_CHAIN = "postrouting";

interface NftRule {
  rule?: { table: string; chain: string; handle: number; comment?: string; expr?: unknown[] };
}

async function natRules(deps: NetworkDeps): Promise<{ handle: number; vmId: string; guestAddress: string }[]> {
  let stdout: string;
  try {
    ({ stdout } = await deps.runner.run(["nft", "-j", "list", "table", "ip", NFT_TABLE]));
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

export async function enableNat(
  deps: NetworkDeps,
  req: { vmId: string; guestAddress: string; bridge: string },
): Promise<{ added: boolean }> {
  const vmId = validVmId(req.vmId);
  const guest = parseIpv4(req.guestAddress, "guest_address");
  const { cidr } = await bangerBridge(deps, req.bridge);
  requireGuestAddress(cidr, guest, req.bridge);
  const rules = await natRules(deps);
  const mine = rules.filter((r) => r.vmId === vmId);
  if (mine.length === 1 && mine[0]?.guestAddress === guest.text) return { added: false };
  const script = [
    `table ip ${NFT_TABLE} {`,
    `  chain ${NFT_CHAIN} { type nat hook postrouting priority srcnat; policy accept; }`,
    `}`,
    ...mine.map((r) => `delete rule ip ${NFT_TABLE} ${NFT_CHAIN} handle ${r.handle}`),
    `add rule ip ${NFT_TABLE} ${NFT_CHAIN} ip saddr ${guest.text} oifname != "${req.bridge}" masquerade comment "vm:${vmId}"`,
  ].join("\n");
  await deps.runner.run(["nft", "-f", "-"], { stdin: `${script}\n` });
  return { added: true };
}

export async function disableNat(deps: NetworkDeps, req: { vmId: string }): Promise<{ removed: boolean }> {
  const vmId = validVmId(req.vmId);
  const rules = await natRules(deps);
  const mine = rules.filter((r) => r.vmId === vmId);
  if (mine.length === 0) return { removed: false };
  // Removing the last rule removes the table: no empty table is left behind.
  const script =
    mine.length === rules.length
      ? `delete table ip ${NFT_TABLE}`
      : mine.map((r) => `delete rule ip ${NFT_TABLE} ${NFT_CHAIN} handle ${r.handle}`).join("\n");
  await deps.runner.run(["nft", "-f", "-"], { stdin: `${script}\n` });
  return { removed: true };
}

export async function listNatRules(deps: NetworkDeps): Promise<NatRuleInfo[]> {
  return (await natRules(deps)).map(({ vmId, guestAddress }) => ({ vmId, guestAddress }));
}
