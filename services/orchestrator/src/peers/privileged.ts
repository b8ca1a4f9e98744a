import { createPeerClient, createUnixTransport } from "@banger/common";
import { HostService } from "@banger/gen/banger/privileged/v1/host_pb.js";
import type { PeerProbe } from "../core/status.js";
import { callOptions } from "./call-options.js";
import { identityFromVersion } from "./identity.js";

export interface PrivilegedPeer extends PeerProbe {
  readonly close: () => void;
}

/** The orchestrator's client of the privileged helper. Errors arrive as banger's typed errors. */
export function createPrivilegedPeer(socketPath: string): PrivilegedPeer {
  const { transport, close } = createUnixTransport(socketPath, { peer: "privileged helper" });
  const host = createPeerClient(HostService, transport);
  return {
    name: "privileged",
    socket: socketPath,
    async identify(scope) {
      return identityFromVersion(await host.getVersion({}, callOptions(scope)));
    },
    close,
  };
}
