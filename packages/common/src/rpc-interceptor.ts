import { toJson, type DescMessage, type Message } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { codeName, statusOf, toConnectError } from "./error-mapping.js";
import type { Logger } from "./logging.js";
import { OP_ID_HEADER, currentOpId, currentPeer, mintOpId, type PeerCredentials } from "./op-id.js";

export interface RpcInterceptorOptions {
  readonly logger: Logger;
  /** Message of the one line logged when an RPC ends; `rpc` → `rpc completed` / `rpc failed`. */
  readonly logPrefix?: string;
  /** Refuses a caller by throwing; the refusal is answered and logged like any failure. */
  readonly authorize?: (peer: PeerCredentials | undefined) => void;
  /**
   * Log the request's fields (as proto JSON, long values shortened) on the
   * completion line of unary calls that succeeded, i.e. once validated: the
   * helper's audit trail of what it did.
   */
  readonly logArguments?: boolean;
}

const MAX_LOGGED_VALUE = 160;

/** Proto JSON of a request with long strings (file contents, base64 bytes) cut short. */
function loggableArguments(schema: DescMessage, message: Message): unknown {
  const shorten = (value: unknown): unknown => {
    if (typeof value === "string") {
      return value.length > MAX_LOGGED_VALUE ? `${value.slice(0, MAX_LOGGED_VALUE)}…(${value.length} chars)` : value;
    }
    if (Array.isArray(value)) return value.map(shorten);
    if (value !== null && typeof value === "object") {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, shorten(v)]));
    }
    return value;
  };
  return shorten(toJson(schema, message));
}

/**
 * The server edge every banger service shares. For each RPC it:
 * - returns the op id in the `banger-op-id` response header;
 * - maps whatever the handler threw to a gRPC status, with the op id in
 *   trailers and in an ErrorInfo detail (error-mapping.ts);
 * - logs exactly one line when the RPC ends (for streams: when the stream
 *   ends), with `rpc`, `code` and `duration_ms`.
 * The op id itself is put in context per HTTP/2 request, before this runs
 * (see unix-server.ts): context entered here would be lost in streaming handlers.
 */
export function createRpcInterceptor(options: RpcInterceptorOptions): Interceptor {
  const { logger } = options;
  const prefix = options.logPrefix ?? "rpc";
  return (next) => async (req) => {
    const started = performance.now();
    const opId = currentOpId() ?? mintOpId();
    const rpc = `${req.service.typeName}/${req.method.name}`;
    const timeout = req.header.get("grpc-timeout");
    const peer = currentPeer();
    const finish = (error?: unknown): ConnectError | undefined => {
      const fields: Record<string, unknown> = {
        rpc,
        duration_ms: Math.round((performance.now() - started) * 100) / 100,
      };
      if (timeout !== null) fields["grpc_timeout"] = timeout;
      if (peer) {
        fields["caller_uid"] = peer.uid;
        fields["caller_pid"] = peer.pid;
      }
      if (error === undefined) {
        if (options.logArguments === true && !req.stream)
          fields["args"] = loggableArguments(req.method.input, req.message);
        logger.info({ ...fields, code: "ok" }, `${prefix} completed`);
        return undefined;
      }
      const status = statusOf(error);
      fields["code"] = codeName(status.code);
      fields["reason"] = status.reason;
      if (error instanceof Error && status.code === Code.Internal) {
        fields["err"] = error; // logged in full here, sent without internals
      } else {
        fields["error"] = status.message;
      }
      logger.warn(fields, `${prefix} failed`);
      return toConnectError(error, opId);
    };

    let res;
    try {
      options.authorize?.(peer);
      res = await next(req);
    } catch (error) {
      throw finish(error) ?? error;
    }
    res.header.set(OP_ID_HEADER, opId);
    if (!res.stream) {
      finish();
      return res;
    }
    const messages = res.message;
    const signal = req.signal;
    async function* watched() {
      let ended = false;
      try {
        yield* messages;
        ended = true;
        finish();
      } catch (error) {
        ended = true;
        throw finish(error) ?? error;
      } finally {
        if (!ended) {
          // The consumer stopped early: the client hung up or the server is shutting down.
          finish(new ConnectError(signal.aborted ? "call cancelled" : "stream closed early", Code.Canceled));
        }
      }
    }
    return { ...res, message: watched() };
  };
}
