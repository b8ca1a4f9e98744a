import { BangerError, type ErrorKind, type ServiceIdentity } from "@banger/common";
import type { CallScope } from "./call-scope.js";

export type ServiceRole = "orchestrator" | "privileged" | "image-puller";

export type { ServiceIdentity };

export interface ServiceHealth {
  readonly name: ServiceRole;
  readonly socket: string;
  readonly identity?: ServiceIdentity;
  /** Why it could not be asked, when it could not. */
  readonly error?: { readonly kind: ErrorKind; readonly message: string };
}

/** A service the orchestrator can ask for its identity. */
export interface PeerProbe {
  readonly name: ServiceRole;
  readonly socket: string;
  identify(scope: CallScope): Promise<ServiceIdentity>;
}

/**
 * The status of all three services: the orchestrator's own, then each peer
 * asked in parallel. An unreachable peer is reported, not thrown: status is
 * how a user finds out what is down.
 */
export async function collectStatus(
  self: ServiceHealth,
  peers: readonly PeerProbe[],
  scope: CallScope,
): Promise<ServiceHealth[]> {
  const answers = await Promise.all(
    peers.map(async (peer): Promise<ServiceHealth> => {
      try {
        return { name: peer.name, socket: peer.socket, identity: await peer.identify(scope) };
      } catch (error) {
        if (!(error instanceof BangerError)) throw error;
        return { name: peer.name, socket: peer.socket, error: { kind: error.kind, message: error.message } };
      }
    }),
  );
  return [self, ...answers];
}

/** The orchestrator runs as the owner user; as root it would hold far more than it needs. */
export function describeOrchestrator(version: string): ServiceIdentity {
  const uid = process.getuid?.() ?? -1;
  return {
    version,
    pid: process.pid,
    uid,
    gid: process.getgid?.() ?? -1,
    privilegesOk: uid !== 0,
    privilegesDetail:
      uid === 0 ? "runs as root; bangerd should run as the owner user" : `runs as the owner (uid ${uid})`,
  };
}
