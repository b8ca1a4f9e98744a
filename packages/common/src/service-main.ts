import { getHeapStatistics } from "node:v8";
import type { ConnectRouter } from "@connectrpc/connect";
import type { DescFile } from "@bufbuild/protobuf";
import { FailedPreconditionError } from "./errors.js";
import { createIdleCollector } from "./idle-gc.js";
import { createLogger, endLog, type Logger, type ServiceName } from "./logging.js";
import { activatedSocket } from "./socket-activation.js";
import { startUnixServer, type UnixServerOptions } from "./unix-server.js";

export interface ServiceMainOptions {
  readonly service: ServiceName;
  readonly socketPath: string;
  readonly mode: 0o600 | 0o660;
  readonly logPrefix?: string;
  readonly files: readonly DescFile[];
  readonly routes: (router: ConnectRouter, logger: Logger) => void;
  /** The service's logger, when it needs one before serving; else one is made. */
  readonly logger?: Logger;
  /** Runs after the server has stopped (close the database…). */
  readonly onStop?: () => Promise<void>;
  /** Passed to the server: see UnixServerOptions. */
  readonly access?: Pick<UnixServerOptions, "peerCredentials" | "authorize" | "socketGroup" | "logArguments">;
}

/**
 * Runs a service until SIGTERM or SIGINT, then stops it gracefully. A start-up
 * failure (socket in use, path too long…) is logged and exits 1. Under a
 * systemd socket unit it serves the socket systemd passed (which must be the
 * one at `socketPath`) instead of binding its own. Under `node --expose-gc`
 * (the units' flag) it gives memory back after each quiet spell (idle-gc.ts).
 */
export async function runService(options: ServiceMainOptions): Promise<void> {
  const logger = options.logger ?? createLogger({ service: options.service });
  // Without --expose-gc (a test, a hand-started service) calls are not even counted.
  const gc = globalThis.gc;
  const idle = gc
    ? createIdleCollector({ gc: () => void gc(), heapSize: () => getHeapStatistics().total_heap_size })
    : undefined;
  let server;
  try {
    const activated = activatedSocket();
    if (activated?.path !== undefined && activated.path !== options.socketPath) {
      throw new FailedPreconditionError(
        `systemd passed a socket bound to ${activated.path}, but this service serves ${options.socketPath}`,
        { reason: "ACTIVATED_SOCKET_MISMATCH" },
      );
    }
    server = await startUnixServer({
      socketPath: options.socketPath,
      mode: options.mode,
      logger,
      files: options.files,
      routes: (router) => options.routes(router, logger),
      ...(options.logPrefix === undefined ? {} : { logPrefix: options.logPrefix }),
      ...options.access,
      ...(activated ? { listenFd: activated.fd } : {}),
      ...(idle ? { calls: idle } : {}),
    });
  } catch (error) {
    idle?.stop();
    logger.fatal({ err: error }, `${options.service} failed to start: ${(error as Error).message}`);
    process.exitCode = 1;
    return;
  }
  // The log is written asynchronously: its last lines ("shutting down", "stopped") are written out, in order,
  // before the process exits.
  const exit = (code: number) => void endLog(logger).then(() => process.exit(code));
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    // A second signal during the shutdown (a supervisor that passes its own on, a second Ctrl-C) must not end
    // the process before it has closed: the listener stays, and the shutdown under way goes on.
    if (stopping) {
      logger.info({ signal }, "shutting down already");
      return;
    }
    stopping = true;
    idle?.stop();
    logger.info({ signal }, "shutting down");
    server
      .close()
      .then(() => options.onStop?.())
      .then(
        () => exit(0),
        (error: unknown) => {
          logger.error({ err: error }, "shutdown failed");
          exit(1);
        },
      );
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}
