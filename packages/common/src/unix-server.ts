import { chmod, chown, lstat, unlink } from "node:fs/promises";
import type { Socket } from "node:net";
import { setMaxListeners } from "node:events";
import http2 from "node:http2";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { DescFile } from "@bufbuild/protobuf";
import { registerHealth, createHealthState } from "./health.js";
import type { Logger } from "./logging.js";
import { OP_ID_HEADER, adoptOrMintOpId, runWithOpId, type PeerCredentials } from "./op-id.js";
import { registerReflection } from "./reflection.js";
import { createRpcInterceptor } from "./rpc-interceptor.js";
import { clearStaleSocket } from "./socket-path.js";

export interface UnixServerOptions {
  readonly socketPath: string;
  /** Permission bits of the socket, set at bind time (no window with wider ones). */
  readonly mode: 0o600 | 0o660;
  readonly logger: Logger;
  /** Prefix of the per-RPC log line (`rpc` or `helper rpc`). */
  readonly logPrefix?: string;
  /** Registers the service implementations. */
  readonly routes: (router: ConnectRouter) => void;
  /** Generated files of the services served, for reflection. */
  readonly files: readonly DescFile[];
  /** Reads the caller's credentials from a new connection (SO_PEERCRED); they are logged and passed to `authorize`. */
  readonly peerCredentials?: (socket: Socket) => PeerCredentials | undefined;
  /** Refuses a caller by throwing (PermissionDeniedError); runs before every RPC. */
  readonly authorize?: (peer: PeerCredentials | undefined) => void;
  /** Log each successful unary call's (validated) arguments on its completion line. */
  readonly logArguments?: boolean;
  /** Owner and group of the socket file, set right after bind (e.g. root:<owner's group> with mode 0660). */
  readonly socketOwner?: { readonly uid: number; readonly gid: number };
  /**
   * A listening socket systemd made and passed (socket activation): served
   * instead of binding `socketPath`. Its file, mode and owner are the socket
   * unit's, and it is never removed (systemd keeps listening after a stop).
   */
  readonly listenFd?: number;
}

export interface UnixServer {
  readonly socketPath: string;
  /**
   * Graceful stop: refuses new connections, sends GOAWAY on every session so
   * clients open no new streams, lets in-flight calls finish for up to
   * `graceMs`, then cancels what is left and removes the socket file.
   */
  close(graceMs?: number): Promise<void>;
}

/** Serves gRPC, gRPC-Web and Connect over HTTP/2 (prior knowledge) on a Unix socket. */
export async function startUnixServer(options: UnixServerOptions): Promise<UnixServer> {
  const { socketPath, logger, listenFd } = options;
  if (listenFd === undefined) await clearStaleSocket(socketPath);

  const health = createHealthState();
  const shutdown = new AbortController();
  // Every call in flight listens on this signal; many at once is normal, not a leak.
  setMaxListeners(0, shutdown.signal);
  const adapter = connectNodeAdapter({
    routes: (router) => {
      options.routes(router);
      registerHealth(router, health);
      registerReflection(router, options.files);
    },
    interceptors: [
      createRpcInterceptor({
        logger,
        logPrefix: options.logPrefix ?? "rpc",
        ...(options.authorize ? { authorize: options.authorize } : {}),
        ...(options.logArguments ? { logArguments: true } : {}),
      }),
    ],
    shutdownSignal: shutdown.signal,
  });

  // The op id context is entered per HTTP/2 request, around the whole adapter,
  // so it also holds inside streaming handlers.
  const peers = new WeakMap<http2.ServerHttp2Session, PeerCredentials>();
  const server = http2.createServer((req, res) => {
    const peer = peers.get(req.stream.session as http2.ServerHttp2Session);
    runWithOpId(adoptOrMintOpId(req.headers[OP_ID_HEADER]), () => adapter(req, res), peer);
  });
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    const peer = options.peerCredentials?.(session.socket);
    if (peer) peers.set(session, peer);
  });

  let ino: number | undefined;
  if (listenFd === undefined) {
    await listenWithMode(server, socketPath, options.mode);
    if (options.socketOwner) await chown(socketPath, options.socketOwner.uid, options.socketOwner.gid);
    ino = (await lstat(socketPath)).ino;
    logger.info({ socket: socketPath, pid: process.pid }, "listening");
  } else {
    await listenOnFd(server, listenFd);
    logger.info({ socket: socketPath, pid: process.pid, activation: "systemd" }, "listening");
  }

  let closing: Promise<void> | undefined;
  const close = (graceMs = 5000): Promise<void> => {
    closing ??= (async () => {
      health.shutdown();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const session of sessions) session.close();
      const timer = setTimeout(() => {
        shutdown.abort(new ConnectError("server is shutting down", Code.Unavailable));
        for (const session of sessions) session.destroy();
      }, graceMs);
      await closed;
      clearTimeout(timer);
      // Node removes the socket file on close; make sure, but never remove a
      // socket another instance has bound since (nor systemd's).
      try {
        if (ino !== undefined && (await lstat(socketPath)).ino === ino) await unlink(socketPath);
      } catch {
        // already gone
      }
      logger.info({ socket: socketPath }, "stopped");
    })();
    return closing;
  };
  health.set("", "SERVING");
  for (const file of options.files) {
    for (const service of file.services) health.set(service.typeName, "SERVING");
  }
  return { socketPath, close };
}

function listenOnFd(server: http2.Http2Server, fd: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen({ fd }, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

function listenWithMode(server: http2.Http2Server, socketPath: string, mode: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    // The socket is created by bind(2) with 0777 & ~umask: set the umask for
    // exactly that call, so the socket never exists with wider permissions.
    const previous = process.umask(0o777 & ~mode);
    try {
      server.listen(socketPath, () => {
        server.off("error", reject);
        chmod(socketPath, mode).then(resolve, reject);
      });
    } finally {
      process.umask(previous);
    }
  });
}
