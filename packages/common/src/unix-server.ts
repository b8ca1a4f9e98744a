import { constants } from "node:fs";
import { lstat, open, unlink, type FileHandle } from "node:fs/promises";
import type { Socket } from "node:net";
import { setMaxListeners } from "node:events";
import http2 from "node:http2";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { DescFile } from "@bufbuild/protobuf";
import { dirname, basename } from "node:path";
import { FailedPreconditionError } from "./errors.js";
import type { CallTracker } from "./idle-gc.js";
import { registerHealth, createHealthState } from "./health.js";
import type { Logger } from "./logging.js";
import { OP_ID_HEADER, adoptOrMintOpId, runWithOpId, type PeerCredentials } from "./op-id.js";
import { registerReflection } from "./reflection.js";
import { createRpcInterceptor } from "./rpc-interceptor.js";
import { checkSocketPathLength, clearStaleSocket } from "./socket-path.js";

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
  /**
   * Group of the socket file (e.g. the owner's, with mode 0660), given at bind time: the
   * process binds with it as its effective gid. Nothing changes the socket by name after
   * bind: in a directory another user can write, that name may be theirs by then.
   */
  readonly socketGroup?: number;
  /**
   * A listening socket systemd made and passed (socket activation): served
   * instead of binding `socketPath`. Its file, mode and owner are the socket
   * unit's, and it is never removed (systemd keeps listening after a stop).
   */
  readonly listenFd?: number;
  /** Told of every call (HTTP/2 request) as it starts and when its stream closes: see idle-gc.ts. */
  readonly calls?: CallTracker;
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
  // Every step on the socket's name goes through its directory, opened once: a directory
  // renamed or swapped for a symlink afterwards cannot redirect the bind or the removal.
  let socketDir: FileHandle | undefined;
  if (listenFd === undefined) {
    checkSocketPathLength(socketPath);
    socketDir = await openSocketDir(socketPath, options.socketGroup);
    try {
      await clearStaleSocket(socketPath, inSocketDir(socketDir, socketPath));
    } catch (error) {
      await socketDir.close();
      throw error;
    }
  }

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
    if (options.calls) req.stream.once("close", options.calls.started());
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
  if (socketDir !== undefined) {
    const bound = inSocketDir(socketDir, socketPath);
    try {
      await listenBornPrivate(server, bound, options.mode, options.socketGroup);
    } catch (error) {
      await socketDir.close();
      throw error;
    }
    ino = await ownSocketIno(bound);
    logger.info({ socket: socketPath, pid: process.pid }, "listening");
  } else if (listenFd !== undefined) {
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
      if (socketDir !== undefined) {
        const bound = inSocketDir(socketDir, socketPath);
        try {
          if (ino !== undefined && (await lstat(bound)).ino === ino) await unlink(bound);
        } catch {
          // already gone
        }
        await socketDir.close();
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

const S_ISGID = 0o2000;

/** The socket's name inside its open directory: the kernel resolves the directory from the fd, not from a path. */
function inSocketDir(dir: FileHandle, socketPath: string): string {
  return `/proc/self/fd/${dir.fd}/${basename(socketPath)}`;
}

/**
 * Opens the directory the socket is made in. It must be a directory, not a
 * symlink to one, and, when the socket is to have a group, not set-group-ID
 * with another group (bind would give the socket the directory's group).
 */
async function openSocketDir(socketPath: string, group: number | undefined): Promise<FileHandle> {
  const path = dirname(socketPath);
  let dir: FileHandle;
  try {
    dir = await open(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== "ELOOP" && code !== "ENOTDIR") throw error;
    throw new FailedPreconditionError(
      `socket directory ${path} is a symlink or not a directory; give the directory itself`,
      {
        reason: "SOCKET_DIR_UNSAFE",
        cause: error,
      },
    );
  }
  const stats = await dir.stat();
  if (group !== undefined && stats.mode & S_ISGID && stats.gid !== group) {
    await dir.close();
    throw new FailedPreconditionError(
      `socket directory ${path} is set-group-ID with group ${stats.gid}: a socket made there could not have group ${group}`,
      { reason: "SOCKET_DIR_UNSAFE" },
    );
  }
  return dir;
}

/**
 * Listens on `bound`, the socket born with its final mode and group: bind(2)
 * creates it with 0777 & ~umask, owned by the effective uid and gid, and
 * Node binds synchronously inside listen(), so both are set for exactly that
 * call. Nothing chmods or chowns the socket by name afterwards: in a directory
 * the owner can write, the name may be the owner's symlink by then (to
 * /etc/shadow), and root would change the symlink's target.
 */
function listenBornPrivate(
  server: http2.Http2Server,
  bound: string,
  mode: number,
  group: number | undefined,
): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    const previousUmask = process.umask(0o777 & ~mode);
    const previousGid = process.getegid?.();
    try {
      if (group !== undefined && group !== previousGid) setEffectiveGid(group);
      server.listen(bound, () => {
        server.off("error", reject);
        resolve();
      });
    } finally {
      if (previousGid !== undefined && process.getegid?.() !== previousGid) setEffectiveGid(previousGid);
      process.umask(previousUmask);
    }
  });
}

function setEffectiveGid(gid: number): void {
  if (!process.setegid) throw new Error("this platform cannot set the effective gid a socket is made with");
  process.setegid(gid);
}

/** The inode of the socket this process just bound, unless someone has replaced the name already (then nothing is removed at close). */
async function ownSocketIno(bound: string): Promise<number | undefined> {
  try {
    const stats = await lstat(bound);
    return stats.isSocket() && stats.uid === process.geteuid?.() ? stats.ino : undefined;
  } catch {
    return undefined;
  }
}
