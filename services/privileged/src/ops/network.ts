/**
 * Bridge, taps, NAT and `.vm` resolver routing. Every link banger makes is
 * marked with an alias (`banger:bridge`, `banger:tap:<vm_id>`, `banger:pool`);
 * a link without banger's mark is never changed or deleted. Requests are
 * validated completely before the first host command runs.
 */
import { configureResolver, deleteBridge, ensureBridge, removeResolver } from "./network/bridge.js";
import { rawLinks, toInfo } from "./network/links.js";
import { disableNat, enableNat, listNatRules } from "./network/nat.js";
import { createTap, deleteTap } from "./network/taps.js";
import type { LinkInfo, NatRuleInfo, NetworkDeps } from "./network/types.js";

export type { LinkInfo, LinkKind, NatRuleInfo, NetworkDeps } from "./network/types.js";

export interface NetworkOps {
  ensureBridge(req: { name: string; address: string }): Promise<{ created: boolean }>;
  deleteBridge(req: { name: string }): Promise<{ existed: boolean }>;
  createTap(req: {
    vmId: string;
    bridge: string;
    pool: boolean;
    fromPool: string;
    guestAddress?: string;
  }): Promise<{ name: string }>;
  deleteTap(req: { vmId: string; poolName: string }): Promise<{ existed: boolean }>;
  enableNat(req: { vmId: string; guestAddress: string; bridge: string }): Promise<{ added: boolean }>;
  disableNat(req: { vmId: string }): Promise<{ removed: boolean }>;
  configureResolver(req: { bridge: string; dnsAddress: string }): Promise<void>;
  removeResolver(req: { bridge: string }): Promise<{ existed: boolean }>;
  listLinks(): Promise<LinkInfo[]>;
  listNatRules(): Promise<NatRuleInfo[]>;
}

export function createNetworkOps(deps: NetworkDeps): NetworkOps {
  return {
    ensureBridge: (req) => ensureBridge(deps, req),
    deleteBridge: (req) => deleteBridge(deps, req),
    createTap: (req) => createTap(deps, req),
    deleteTap: (req) => deleteTap(deps, req),
    enableNat: (req) => enableNat(deps, req),
    disableNat: (req) => disableNat(deps, req),
    configureResolver: (req) => configureResolver(deps, req),
    removeResolver: (req) => removeResolver(deps, req),
    async listLinks() {
      const infos = (await rawLinks(deps)).flatMap((l) => toInfo(l) ?? []);
      return infos.sort((a, b) => a.name.localeCompare(b.name));
    },
    listNatRules: () => listNatRules(deps),
  };
}
