import { lstat, unlink } from "node:fs/promises";
import { connect } from "node:net";
import { FailedPreconditionError, InvalidArgumentError } from "./errors.js";
import { activatedSocket } from "./socket-activation.js";

/** sun_path is 108 bytes including the terminating NUL; Node silently truncates longer paths. */
export const MAX_SOCKET_PATH_BYTES = 107;

export function checkSocketPathLength(socketPath: string): void {
  const bytes = Buffer.byteLength(socketPath);
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    throw new InvalidArgumentError(
      `socket path ${socketPath} is ${bytes} bytes; a Unix socket path may have at most ${MAX_SOCKET_PATH_BYTES}`,
      { reason: "SOCKET_PATH_TOO_LONG" },
    );
  }
}

/** Whether something accepts connections on the socket at `socketPath`. */
export function probeSocket(socketPath: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    const done = (result: boolean | Error) => {
      socket.destroy();
      clearTimeout(timer);
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    // A live server that does not accept within the timeout is still live.
    const timer = setTimeout(() => done(true), timeoutMs);
    socket.once("connect", () => done(true));
    socket.once("error", (error: NodeJS.ErrnoException) => {
      if (error.code === "ECONNREFUSED" || error.code === "ENOENT") done(false);
      else done(error);
    });
  });
}

/**
 * Makes `socketPath` free to bind: nothing there is fine; a socket nobody
 * listens on (left by a crash or `kill -9`) is removed; a live socket is
 * refused (another instance runs), and so is anything that is not a socket.
 * A socket systemd passed to this process is systemd's: it is left alone.
 * `via` is the name the checks and the removal use when it differs from the
 * one shown (the socket's name inside a directory opened once, see unix-server).
 */
export async function clearStaleSocket(socketPath: string, via = socketPath): Promise<void> {
  checkSocketPathLength(socketPath);
  const activated = activatedSocket();
  if (activated && (activated.path === undefined || activated.path === socketPath)) return;
  let stats;
  try {
    stats = await lstat(via);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
  if (!stats.isSocket()) {
    throw new FailedPreconditionError(`${socketPath} exists and is not a socket; refusing to replace it`, {
      reason: "SOCKET_PATH_OCCUPIED",
    });
  }
  if (await probeSocket(via)) {
    throw new FailedPreconditionError(`another server is already listening on ${socketPath}`, {
      reason: "ALREADY_RUNNING",
    });
  }
  await unlink(via);
}
