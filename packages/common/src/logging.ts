import { EventEmitter } from "node:events";
import { pino, type DestinationStream, type Logger } from "pino";
import { currentOpId } from "./op-id.js";

export type { Logger } from "pino";

/** The names the three services log under (the `service` field). */
export type ServiceName = "orchestrator" | "privileged" | "image-puller";

export interface LoggerOptions {
  readonly service: ServiceName;
  readonly level?: string;
  /** Where JSON lines go; stdout (journald keeps it) when omitted. */
  readonly destination?: DestinationStream;
}

/**
 * Lines go to stdout asynchronously (sonic-boom): a line is queued and written
 * by the next write(2), lines written meanwhile with it, so no call waits on the
 * reader (journald, a pipe) and a busy service writes many lines at once. pino
 * writes what is queued synchronously when the process exits, however it exits
 * (process.exit, the end of the event loop, an uncaught exception); only a
 * SIGKILL or an abort can lose the lines of the last write in flight, which
 * a synchronous write did not protect either (a call's line is written after its work).
 * That synchronous write can pass a write still in flight, though: a service that
 * ends itself calls `endLog` first, so its last lines ("shutting down", "stopped")
 * come out in order.
 *
 * The JSON logger all three services share, so their lines read side by side:
 * `time` (ISO 8601), `level` (a label), `service`, `op_id` (from the current
 * op context, on every line written inside a call), `msg`, then fields such as
 * `rpc`, `code`, `duration_ms`.
 */
export function createLogger(options: LoggerOptions): Logger {
  return pino(
    {
      level: options.level ?? process.env["BANGER_LOG_LEVEL"] ?? "info",
      base: { service: options.service },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      mixin: () => {
        const opId = currentOpId();
        return opId === undefined ? {} : { op_id: opId };
      },
    },
    options.destination ?? pino.destination({ dest: 1, sync: false }),
  );
}

/**
 * Writes out what the logger has queued, in order, and closes its destination (stdout's sonic-boom):
 * resolves once written, or after `waitMs` (a reader that takes nothing does not hold the exit).
 * For the end of a process; the logger writes nothing after it.
 */
export function endLog(logger: Logger, waitMs = 2_000): Promise<void> {
  const stream = (logger as unknown as Record<symbol, unknown>)[pino.symbols.streamSym];
  // Only a destination that can end and say so (sonic-boom); a test's own stream has nothing queued.
  if (!(stream instanceof EventEmitter) || !("end" in stream) || typeof stream.end !== "function") {
    return Promise.resolve();
  }
  const end = stream.end.bind(stream) as () => void;
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, waitMs);
    timer.unref();
    const done = () => {
      clearTimeout(timer);
      resolve();
    };
    stream.once("close", done);
    stream.once("error", done);
    end();
  });
}
