import { implementService } from "@banger/common";
import { PullerService } from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import type { ServiceImpl } from "@connectrpc/connect";
import { describePuller } from "../identity.js";

/** `banger.imagepuller.v1.PullerService`: version so far; Pull comes with the registry client. */
export function createPullerService(): ServiceImpl<typeof PullerService> {
  return implementService(PullerService, {
    getVersion() {
      return describePuller();
    },
  });
}
