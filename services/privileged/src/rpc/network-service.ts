import { implementService } from "@banger/common/service-impl";
import { NetworkService } from "@banger/gen/banger/privileged/v1/network_pb.js";
import type { ServiceImpl } from "@connectrpc/connect";
import type { NetworkOps } from "../ops/network.js";

/** `banger.privileged.v1.NetworkService` over the network ops (which validate everything). */
export function createNetworkService(ops: NetworkOps): ServiceImpl<typeof NetworkService> {
  return implementService(NetworkService, {
    ensureBridge: (req) => ops.ensureBridge(req),
    deleteBridge: (req) => ops.deleteBridge(req),
    createTap: (req) => ops.createTap(req),
    deleteTap: (req) => ops.deleteTap(req),
    enableNat: (req) => ops.enableNat(req),
    disableNat: (req) => ops.disableNat(req),
    configureResolver: async (req) => {
      await ops.configureResolver(req);
      return {};
    },
    removeResolver: (req) => ops.removeResolver(req),
  });
}
