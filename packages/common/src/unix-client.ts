import { connect } from "node:net";
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import type { DescService } from "@bufbuild/protobuf";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { fromConnectError } from "./error-mapping.js";
import { OP_ID_HEADER, currentOpId } from "./op-id.js";

export interface UnixTransportOptions {
  /** Who is behind the socket, for messages: `orchestrator`, `image-puller`… */
  readonly peer: string;
  readonly interceptors?: readonly Interceptor[];
  /**
   * HTTP/2 PINGs while a call is open: one after `intervalMs` without data, and the connection (with its
   * calls) closes with UNAVAILABLE "PING timed out" when no answer comes within `timeoutMs`. A peer that
   * stops answering is found this way however quiet its streams legitimately are.
   */
  readonly ping?: { readonly intervalMs: number; readonly timeoutMs: number };
}

export interface UnixTransport {
  readonly transport: Transport;
  readonly socketPath: string;
  /** Closes the HTTP/2 connection (and any stream still open on it). */
  readonly close: () => void;
}

const CONNECT_ERRORS: Record<string, string> = {
  ENOENT: "no socket there",
  ECONNREFUSED: "nothing is listening",
  EACCES: "permission denied",
  ENOTSOCK: "not a socket",
  ECONNRESET: "connection reset",
  EPIPE: "connection closed",
};

/** A gRPC transport (HTTP/2, binary) to a banger service on a Unix socket. */
export function createUnixTransport(socketPath: string, options: UnixTransportOptions): UnixTransport {
  const baseUrl = "http://localhost";
  const sessionManager = new Http2SessionManager(
    baseUrl,
    options.ping ? { pingIntervalMs: options.ping.intervalMs, pingTimeoutMs: options.ping.timeoutMs } : {},
    {
      createConnection: () => connect(socketPath),
    },
  );
  const interceptors: Interceptor[] = [];
  interceptors.push(...(options.interceptors ?? []), forwardOpId, unreachableAsUnavailable(options.peer, socketPath));
  const transport = createGrpcTransport({ baseUrl, sessionManager, interceptors });
  return { transport, socketPath, close: () => sessionManager.abort() };
}

/** Carries the current op id to the callee, which adopts it. */
const forwardOpId: Interceptor = (next) => (req) => {
  const opId = currentOpId();
  if (opId !== undefined && !req.header.has(OP_ID_HEADER)) req.header.set(OP_ID_HEADER, opId);
  return next(req);
};

/**
 * A socket that is missing or refuses connections surfaces from Node as
 * INTERNAL/ENOENT or similar; report it as UNAVAILABLE naming the socket.
 */
function unreachableAsUnavailable(peer: string, socketPath: string): Interceptor {
  const rewrite = (error: unknown): unknown => {
    const errno = errnoInChain(error);
    if (errno === undefined) return error;
    const why = CONNECT_ERRORS[errno] ?? errno;
    return new ConnectError(
      `${peer} is unavailable at ${socketPath}: ${why}`,
      Code.Unavailable,
      undefined,
      undefined,
      error,
    );
  };
  return (next) => async (req) => {
    try {
      return await next(req);
    } catch (error) {
      throw rewrite(error);
    }
  };
}

function errnoInChain(error: unknown): string | undefined {
  const seen = new Set<unknown>();
  let current: unknown = error;
  while (current instanceof Error && !seen.has(current)) {
    seen.add(current);
    const code = (current as NodeJS.ErrnoException).code;
    if (typeof code === "string" && code in CONNECT_ERRORS) return code;
    current = current.cause;
  }
  return undefined;
}

/**
 * A client for service-to-service calls: every status received becomes
 * banger's typed error (`UnavailableError`, `NotFoundError`…), so core code
 * never sees transport types. (This cannot be an interceptor: the client
 * wraps whatever an interceptor throws into a ConnectError.) The CLI keeps
 * plain clients, to print codes and op ids.
 */
export function createPeerClient<S extends DescService>(service: S, transport: Transport): Client<S> {
  const client = createClient(service, transport) as Record<string, (...args: unknown[]) => unknown>;
  const wrapped: Record<string, unknown> = {};
  for (const method of service.methods) {
    const call = client[method.localName];
    if (call === undefined) continue;
    wrapped[method.localName] =
      method.methodKind === "unary" || method.methodKind === "client_streaming"
        ? async (...args: unknown[]) => {
            try {
              return await call(...args);
            } catch (error) {
              throw asDomainError(error);
            }
          }
        : async function* (...args: unknown[]) {
            try {
              yield* call(...args) as AsyncIterable<unknown>;
            } catch (error) {
              throw asDomainError(error);
            }
          };
  }
  return wrapped as Client<S>;
}

function asDomainError(error: unknown): unknown {
  return error instanceof ConnectError ? fromConnectError(error) : error;
}
