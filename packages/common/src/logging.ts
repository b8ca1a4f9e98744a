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
