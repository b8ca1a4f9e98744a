import { implementService } from "@banger/common";
import { HostService } from "@banger/gen/banger/privileged/v1/host_pb.js";
import type { ServiceImpl } from "@connectrpc/connect";
import { probeHostFeatures } from "../host/features.js";
import { describeHelper } from "../ops/version.js";

export interface HostServiceDeps {
  readonly ownerUid: number;
}

/** `banger.privileged.v1.HostService`: version and health so far. */
export function createHostService(deps: HostServiceDeps): ServiceImpl<typeof HostService> {
  return implementService(HostService, {
    getVersion() {
      const identity = describeHelper(deps.ownerUid);
      return {
        ...identity,
        capabilities: [...identity.capabilities],
        missingCapabilities: [...identity.missingCapabilities],
        features: probeHostFeatures(),
      };
    },
  });
}
