import { OP_ID_HEADER } from "@banger/common/op-id";
import { createUnixTransport } from "@banger/common/unix-client";
import { createClient, type CallOptions, type Client, type Interceptor } from "@connectrpc/connect";
import type { DescService } from "@bufbuild/protobuf";
import { commandOpId, resolveOrchestratorSocket, type GlobalOptions } from "./context.js";

export interface Orchestrator {
  readonly socket: string;
  client<S extends DescService>(service: S): Client<S>;
  /** Call options that send this command's op id. */
  callOptions(extra?: CallOptions): CallOptions;
  readonly close: () => void;
}

/** How long a call may go unanswered before a person at a terminal is told where to look. */
const SLOW_ANSWER_MS = 15_000;

/**
 * Says once, on a terminal's stderr, that bangerd has not answered yet and where to look. Under
 * socket activation a bangerd that cannot start leaves calls waiting in its socket's queue, silently.
 */
export function slowAnswerHint(socket: string, write: (text: string) => void): Interceptor {
  let told = false;
  return (next) => async (req) => {
    const timer = setTimeout(() => {
      if (told) return;
      told = true;
      write(
        `banger: no answer from bangerd at ${socket} for ${SLOW_ANSWER_MS / 1000} s; still waiting ` +
          `(installed: systemctl status bangerd.service, journalctl -u bangerd)\n`,
      );
    }, SLOW_ANSWER_MS);
    timer.unref();
    try {
      return await next(req); // a stream's response (its headers) means bangerd answered
    } finally {
      clearTimeout(timer);
    }
  };
}

/** A connection to the orchestrator found from the global options and the environment. */
export function connectOrchestrator(options: GlobalOptions): Orchestrator {
  const socket = resolveOrchestratorSocket(options);
  const interceptors = process.stderr.isTTY ? [slowAnswerHint(socket, (text) => process.stderr.write(text))] : [];
  const { transport, close } = createUnixTransport(socket, { peer: "orchestrator (bangerd)", interceptors });
  return {
    socket,
    client: (service) => createClient(service, transport),
    callOptions: (extra = {}) => ({ ...extra, headers: { [OP_ID_HEADER]: commandOpId } }),
    close,
  };
}
