import { createPeerClient, createUnixTransport } from "@banger/common";
import { PullerService } from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import type { PeerProbe } from "../core/status.js";
import { callOptions } from "./call-options.js";
import { identityFromVersion } from "./identity.js";

export interface PullerPeer extends PeerProbe {
  readonly close: () => void;
}

/** The orchestrator's client of the image puller. Errors arrive as banger's typed errors. */
export function createPullerPeer(socketPath: string): PullerPeer {
  const { transport, close } = createUnixTransport(socketPath, { peer: "image puller" });
  const puller = createPeerClient(PullerService, transport);
  return {
    name: "image-puller",
    socket: socketPath,
    async identify(scope) {
      return identityFromVersion(await puller.getVersion({}, callOptions(scope)));
    },
    close,
  };
}
