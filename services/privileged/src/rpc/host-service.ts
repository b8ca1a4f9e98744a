import { implementService } from "@banger/common/service-impl";
import { HostService, LinkKind } from "@banger/gen/banger/privileged/v1/host_pb.js";
import type { ServiceImpl } from "@connectrpc/connect";
import type { HostFeatures } from "../host/features.js";
import type { DiskOps } from "../ops/disk.js";
import type { NetworkOps } from "../ops/network.js";
import type { VmmOps } from "../ops/vmm.js";
import { vmmProcessToProto } from "./vmm-service.js";
import { describeHelper } from "../ops/version.js";

export interface HostServiceDeps {
  readonly ownerUid: number;
  /** The VMM binaries it launches, reported so doctor can compare them with bangerd's. */
  readonly firecrackerBinary: string;
  readonly qemuBinary: string;
  readonly network: NetworkOps;
  readonly disk: DiskOps;
  readonly vmm: VmmOps;
  /** The host feature probe (a port: main.ts hands in the host's). */
  readonly hostFeatures: () => HostFeatures;
}

/** `banger.privileged.v1.HostService`: identity, host features and the inventory of banger's resources. */
export function createHostService(deps: HostServiceDeps): ServiceImpl<typeof HostService> {
  // Who the helper is does not change while it runs (nothing in it changes its capabilities):
  // read once, not /proc/self/status at every call.
  const identity = describeHelper(deps.ownerUid);
  return implementService(HostService, {
    getVersion(req) {
      const who = {
        ...identity,
        capabilities: [...identity.capabilities],
        missingCapabilities: [...identity.missingCapabilities],
      };
      if (req.identityOnly) return who;
      return {
        ...who,
        features: deps.hostFeatures(),
        firecrackerBinary: deps.firecrackerBinary,
        qemuBinary: deps.qemuBinary,
      };
    },
    async getInventory() {
      const [links, natRules, loopDevices, dmDevices, processes] = await Promise.all([
        deps.network.listLinks(),
        deps.network.listNatRules(),
        deps.disk.listLoops(),
        deps.disk.listSnapshots(),
        deps.vmm.list(),
      ]);
      return {
        links: links.map((l) => ({
          ...l,
          addresses: [...l.addresses],
          kind: l.kind === "bridge" ? LinkKind.BRIDGE : LinkKind.TAP,
        })),
        natRules,
        loopDevices,
        dmDevices,
        vmmProcesses: processes.map(vmmProcessToProto),
      };
    },
  });
}
