import { OP_ID_HEADER } from "@banger/common/op-id";
import { createUnixTransport } from "@banger/common/unix-client";
import { Code, ConnectError, createClient, type CallOptions, type Client, type Interceptor } from "@connectrpc/connect";
import type { DescService } from "@bufbuild/protobuf";
import { commandOpId, resolveOrchestratorSocket, type GlobalOptions } from "./context.js";
import { UsageError } from "./errors.js";

export interface Orchestrator {
  readonly socket: string;
  client<S extends DescService>(service: S): Client<S>;
  /** Call options that send this command's op id. */
  callOptions(extra?: CallOptions): CallOptions;
  readonly close: () => void;
  /**
   * Whether Ctrl-C came while bangerd had not yet answered a call that starts an operation: the operation
   * then exists without the CLI having its id, so the watch cancels it as soon as it starts (see
   * interruptibleStart).
   */
  readonly interruptedWhileStarting: () => boolean;
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

/** How long a unary call may take when neither `--timeout` nor SLOW_CALLS says otherwise. */
export const DEFAULT_DEADLINE_MS = 30_000;

/**
 * Unary calls that legitimately take longer (by method name): they copy or check whole files, or wait for
 * probes with their own timeouts. `--timeout` overrides these too.
 */
const SLOW_CALLS: Readonly<Record<string, number>> = {
  RegisterImage: 600_000, // copies the image's files
  Doctor: 120_000, // probes, each with its own timeout
  Prune: 300_000, // removes files, asks the puller to prune its cache
  SetVm: 300_000, // may grow a work disk (resize2fs)
};

/** Where to look when bangerd does not answer (as slowAnswerHint says). */
const WHERE_TO_LOOK =
  "is bangerd running? check 'banger daemon status'; installed: systemctl status bangerd.socket bangerd.service, " +
  "journalctl -u bangerd";

/**
 * Every unary call gets a deadline (`timeoutMs`, else its SLOW_CALLS entry, else DEFAULT_DEADLINE_MS); past it
 * the call ends with DEADLINE_EXCEEDED and a message naming the socket and where to look. Streams have no
 * deadline of their own: their idle deadline is the connection's (HTTP/2 PINGs, see connectOrchestrator), so
 * a quiet stream whose peer still answers (an interactive exec waiting for input, a long stage) goes on.
 */
export function unaryDeadline(socket: string, timeoutMs: number | undefined): Interceptor {
  return (next) => async (req) => {
    if (req.stream) return next(req);
    const ms = timeoutMs ?? SLOW_CALLS[req.method.name] ?? DEFAULT_DEADLINE_MS;
    const deadline = AbortSignal.timeout(ms);
    // bangerd learns it too (ctx.timeoutMs) and passes what is left on to its own calls to the helper and the puller.
    if (!req.header.has("grpc-timeout")) req.header.set("grpc-timeout", `${ms}m`);
    try {
      return await next({ ...req, signal: AbortSignal.any([req.signal, deadline]) });
    } catch (error) {
      if (!deadline.aborted || req.signal.aborted) throw error;
      throw new ConnectError(
        `no answer from bangerd at ${socket} within ${seconds(ms)} (${req.method.parent.name}/${req.method.name}); ` +
          `${WHERE_TO_LOOK} (--timeout sets this deadline)`,
        Code.DeadlineExceeded,
        undefined,
        undefined,
        error,
      );
    }
  };
}

/**
 * A stream's idle deadline: bangerd's side of the connection must show a sign of life (a message, or the
 * answer to an HTTP/2 PING sent after half the window without data) within `windowMs`; else the stream
 * ends with UNAVAILABLE and a message naming the socket.
 */
export function streamIdleDeadline(
  socket: string,
  windowMs: number,
  onDead: () => void = () => undefined,
): Interceptor {
  const rewrite = (error: unknown): unknown => {
    if (!(error instanceof ConnectError && error.code === Code.Unavailable && error.rawMessage === "PING timed out"))
      return error;
    onDead();
    return new ConnectError(
      `bangerd at ${socket} stopped answering (a keepalive went unanswered; idle deadline ${seconds(windowMs)}); ` +
        WHERE_TO_LOOK,
      Code.Unavailable,
      undefined,
      undefined,
      error,
    );
  };
  return (next) => async (req) => {
    if (!req.stream) return next(req);
    let res;
    try {
      res = await next(req);
    } catch (error) {
      throw rewrite(error);
    }
    if (!res.stream) return res;
    const messages = res.message;
    async function* rewritten() {
      try {
        yield* messages;
      } catch (error) {
        throw rewrite(error);
      }
    }
    return { ...res, message: rewritten() };
  };
}

function seconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`;
}

/**
 * A call that starts an operation (its answer carries an `operation`; not OperationService's own calls) is
 * in flight: the first Ctrl-C is remembered (`onInterrupt`) rather than ending the CLI, so that the
 * operation the call is starting can be cancelled once its id is known; a second Ctrl-C ends the CLI
 * (exit 130), saying where the operation can be found.
 */
export function interruptibleStart(onInterrupt: () => void, write: (text: string) => void): Interceptor {
  return (next) => async (req) => {
    const startsOperation =
      !req.stream &&
      req.service.typeName !== "banger.v1.OperationService" &&
      req.method.output.fields.some((field) => field.name === "operation");
    if (!startsOperation) return next(req);
    let interrupts = 0;
    const onSigint = () => {
      interrupts += 1;
      if (interrupts === 1) {
        onInterrupt();
        write("banger: cancelling as soon as bangerd answers (Ctrl-C again to leave it running)\n");
        return;
      }
      write("banger: left before bangerd answered; the operation may go on: banger op list --active\n");
      process.exit(130);
    };
    process.on("SIGINT", onSigint);
    try {
      const res = await next(req);
      if (interrupts > 0 && !res.stream && (res.message as { operation?: unknown }).operation === undefined) {
        write("banger: interrupted (bangerd started no operation)\n");
        process.exit(130);
      }
      return res;
    } finally {
      process.off("SIGINT", onSigint);
    }
  };
}

/** A connection to the orchestrator found from the global options and the environment. */
export function connectOrchestrator(options: GlobalOptions): Orchestrator {
  const socket = resolveOrchestratorSocket(options);
  const timeoutMs = options.timeout === undefined ? undefined : parseDuration(options.timeout);
  const windowMs = timeoutMs ?? DEFAULT_DEADLINE_MS;
  // A connection its PINGs found dead is left alone: closing it again races its own teardown, whose error
  // connect-node then leaves without a listener (an uncaught 'error' event).
  let dead = false;
  let interruptedWhileStarting = false;
  const interceptors = [
    interruptibleStart(
      () => (interruptedWhileStarting = true),
      (text) => process.stderr.write(text),
    ),
    ...(process.stderr.isTTY ? [slowAnswerHint(socket, (text) => process.stderr.write(text))] : []),
    unaryDeadline(socket, timeoutMs),
    streamIdleDeadline(socket, windowMs, () => (dead = true)),
  ];
  const { transport, close } = createUnixTransport(socket, {
    peer: "orchestrator (bangerd)",
    interceptors,
    ping: { intervalMs: windowMs / 2, timeoutMs: windowMs / 2 },
  });
  return {
    socket,
    client: (service) => createClient(service, transport),
    callOptions: (extra = {}) => ({ ...extra, headers: { [OP_ID_HEADER]: commandOpId } }),
    close: () => {
      if (!dead) close();
    },
    interruptedWhileStarting: () => interruptedWhileStarting,
  };
}

/** "30s", "500ms", "2m", "1.5s" or a bare number of seconds → milliseconds; a usage error for anything else. */
export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim());
  const unit = { ms: 1, s: 1000, m: 60_000 }[match?.[2] ?? "s"] ?? 1000;
  const ms = match ? Math.round(Number(match[1]) * unit) : NaN;
  if (!(ms > 0)) throw new UsageError(`--timeout ${text}: expected a duration such as 30s, 500ms or 2m`);
  return ms;
}
