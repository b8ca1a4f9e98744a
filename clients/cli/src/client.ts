import { OP_ID_HEADER, createUnixTransport } from "@banger/common";
import { createClient, type CallOptions, type Client } from "@connectrpc/connect";
import type { DescService } from "@bufbuild/protobuf";
import { commandOpId, resolveOrchestratorSocket, type GlobalOptions } from "./context.js";

export interface Orchestrator {
  readonly socket: string;
  client<S extends DescService>(service: S): Client<S>;
  /** Call options that send this command's op id. */
  callOptions(extra?: CallOptions): CallOptions;
  readonly close: () => void;
}

/** A connection to the orchestrator found from the global options and the environment. */
export function connectOrchestrator(options: GlobalOptions): Orchestrator {
  const socket = resolveOrchestratorSocket(options);
  const { transport, close } = createUnixTransport(socket, { peer: "orchestrator (bangerd)" });
  return {
    socket,
    client: (service) => createClient(service, transport),
    callOptions: (extra = {}) => ({ ...extra, headers: { [OP_ID_HEADER]: commandOpId } }),
    close,
  };
}
