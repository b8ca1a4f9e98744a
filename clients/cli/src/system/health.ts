/**
 * The live check: bangerd's GetStatus, which calls the helper and the puller
 * through their sockets as the owner, so one answer covers all three (and,
 * with socket activation, the call starts whatever is not running yet).
 */
import { OP_ID_HEADER } from "@banger/common/op-id";
import { createUnixTransport } from "@banger/common/unix-client";
import { SystemService, type ServiceStatus } from "@banger/gen/banger/v1/system_pb.js";
import { ConnectError, createClient } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { commandOpId } from "../context.js";

/** One service as the live check saw it. */
export interface LiveService {
  readonly name: string;
  readonly reachable: boolean;
  readonly socket: string;
  readonly version: string;
  readonly pid: number;
  readonly uid: number;
  readonly privilegesOk: boolean;
  readonly detail: string;
}

export interface LiveStatus {
  /** The op id of the check (this command's), as answered in `banger-op-id`. */
  readonly opId: string;
  readonly services: readonly LiveService[];
}

const SERVICES = ["orchestrator", "privileged", "image-puller"] as const;

function fromStatus(s: ServiceStatus): LiveService {
  return {
    name: s.name,
    reachable: s.reachable,
    socket: s.socket,
    version: s.version,
    pid: s.pid,
    uid: s.uid,
    privilegesOk: s.privilegesOk,
    detail: s.reachable ? s.privilegesDetail : s.errorMessage || s.errorCode,
  };
}

/** Asks bangerd at `socket`; when bangerd does not answer, that is every service's status. */
export async function checkLive(socket: string, timeoutMs: number): Promise<LiveStatus> {
  const { transport, close } = createUnixTransport(socket, { peer: "orchestrator (bangerd)" });
  let answeredOpId = commandOpId;
  try {
    const response = await createClient(SystemService, transport).getStatus(
      {},
      {
        timeoutMs,
        headers: { [OP_ID_HEADER]: commandOpId },
        onHeader: (headers) => (answeredOpId = headers.get(OP_ID_HEADER) ?? answeredOpId),
      },
    );
    const services = response.services.map(fromStatus);
    return { opId: answeredOpId, services };
  } catch (error) {
    if (!(error instanceof ConnectError)) throw error;
    const why = `bangerd did not answer: ${error.rawMessage} (${codeToString(error.code)})`;
    return {
      opId: answeredOpId,
      services: SERVICES.map((name) => ({
        name,
        reachable: false,
        socket: name === "orchestrator" ? socket : "",
        version: "",
        pid: 0,
        uid: 0,
        privilegesOk: false,
        detail: name === "orchestrator" ? why : "unknown: bangerd did not answer",
      })),
    };
  } finally {
    close();
  }
}

export function allAnswer(status: LiveStatus): boolean {
  return SERVICES.every((name) => status.services.some((s) => s.name === name && s.reachable));
}

/**
 * Polls until all three answer or `timeoutMs` passes; returns the last
 * status either way.
 */
export async function waitForHealth(socket: string, timeoutMs: number): Promise<LiveStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = deadline - Date.now();
    const status = await checkLive(socket, Math.max(1000, Math.min(10_000, left)));
    if (allAnswer(status) || Date.now() >= deadline) return status;
    await new Promise((r) => setTimeout(r, 500));
  }
}
