/**
 * Host paths a caller may name: only files inside banger's state directory.
 * The path is checked as text first (absolute, normalised, inside the state
 * directory), then every component from the state directory down is lstat'ed
 * (no symlinks), the file is opened with O_NOFOLLOW | O_NONBLOCK (a FIFO or a
 * device never blocks or gets opened for real: the type is checked before the
 * open and again on the open file), and the open file is proved to be the one
 * that was checked (same inode, one hard link, and the kernel resolves the
 * open fd back to exactly the requested path). The file must also be the
 * owner's (st_uid): the helper opens files on the owner's behalf, so it never
 * lends root's access to one the owner does not own (a root-owned log in the
 * state directory, another service's file). Callers hand the open file, never
 * the path, to host tools.
 */
import { constants, type Stats } from "node:fs";
import { lstat, open, readlink, realpath, type FileHandle } from "node:fs/promises";
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
} from "@banger/common/errors";

/** Linux PATH_MAX. */
const MAX_PATH_BYTES = 4096;

/** Whether `text` holds a control character (NUL, newline, … DEL): none appears in a path banger makes. */
export function hasControlCharacter(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x20 || code === 0x7f) return true;
  }
  return false;
}

/** Whether `path` (already normalised) lies strictly below `stateDir`. */
export function isInsideStateDir(stateDir: string, path: string): boolean {
  const prefix = dirPrefix(stateDir);
  return path.startsWith(prefix) && path.length > prefix.length;
}

function dirPrefix(dir: string): string {
  return dir.endsWith("/") ? dir : `${dir}/`;
}

/**
 * Checks `path` as text: absolute, normalised (no `.`/`..` components, no
 * `//`, no trailing slash), no NUL or control characters, at most PATH_MAX
 * bytes, and strictly inside `stateDir`. Touches nothing on the host.
 */
export function confinedPath(stateDir: string, path: string, field = "path"): string {
  if (path.length === 0 || Buffer.byteLength(path) > MAX_PATH_BYTES || hasControlCharacter(path)) {
    throw new InvalidArgumentError(`${field} must be 1–${MAX_PATH_BYTES} bytes without control characters`, {
      reason: "INVALID_PATH",
    });
  }
  if (!path.startsWith("/")) {
    throw new InvalidArgumentError(`${field} must be an absolute path`, { reason: "INVALID_PATH" });
  }
  const parts = path.slice(1).split("/");
  if (parts.some((p) => p === "" || p === "." || p === "..")) {
    throw new InvalidArgumentError(
      `${field} must be normalised (no "." or ".." components, no "//", no trailing "/")`,
      {
        reason: "INVALID_PATH",
      },
    );
  }
  if (!isInsideStateDir(stateDir, path)) {
    throw new PermissionDeniedError(`${field} must be inside banger's state directory ${stateDir}`, {
      reason: "PATH_OUTSIDE_STATE_DIR",
    });
  }
  return path;
}

/**
 * Opens a file inside `stateDir` for a host tool, refusing anything that is
 * not exactly a regular, singly-linked file of `options.ownerUid` reached
 * without symlinks. Returns the open file; the caller closes it (pass
 * `handle.fd` to the Runner's `fds`).
 */
export async function openConfined(
  stateDir: string,
  path: string,
  options: { write: boolean; ownerUid: number },
): Promise<FileHandle> {
  confinedPath(stateDir, path);
  await checkStateDir(stateDir);

  // Every component below the state directory: a directory, never a symlink; the last one a regular file.
  const below = path.slice(dirPrefix(stateDir).length).split("/");
  let current = stateDir.replace(/\/$/, "");
  let last: Stats | undefined;
  for (const [index, part] of below.entries()) {
    current = `${current}/${part}`;
    const stats = await lstatOrRefuse(current, path);
    if (stats.isSymbolicLink()) {
      throw new PermissionDeniedError(`${current} is a symlink`, { reason: "SYMLINK_IN_PATH" });
    }
    if (index < below.length - 1 && !stats.isDirectory()) {
      throw new InvalidArgumentError(`${current} is not a directory`, { reason: "NOT_A_DIRECTORY" });
    }
    last = stats;
  }
  if (!last) throw new InvalidArgumentError(`${path} names no file`, { reason: "INVALID_PATH" });
  checkRegularSingleLink(last, path);
  checkOwner(last, path, options.ownerUid);

  const flags =
    (options.write ? constants.O_RDWR : constants.O_RDONLY) |
    constants.O_NOFOLLOW |
    constants.O_NONBLOCK |
    constants.O_NOCTTY;
  let handle: FileHandle;
  try {
    handle = await open(path, flags);
  } catch (error) {
    throw openError(error, path);
  }
  try {
    // The open file must be the one that was checked, and still be what the rules allow.
    const opened = await handle.stat();
    checkRegularSingleLink(opened, path);
    checkOwner(opened, path, options.ownerUid);
    if (opened.dev !== last.dev || opened.ino !== last.ino) {
      throw new PermissionDeniedError(`${path} changed while it was being opened`, { reason: "PATH_CHANGED" });
    }
    // The kernel's own view of where the open file lives: a component swapped for a
    // symlink between the checks and the open shows up here as a different path.
    const resolved = await readlink(`/proc/self/fd/${handle.fd}`);
    if (resolved !== path) {
      throw new PermissionDeniedError(`${path} resolves to another path`, { reason: "PATH_CHANGED" });
    }
    return handle;
  } catch (error) {
    await handle.close();
    throw error;
  }
}

/** The state directory itself must be a real directory at its canonical path (no symlink anywhere in it). */
async function checkStateDir(stateDir: string): Promise<void> {
  let real: string;
  try {
    real = await realpath(stateDir);
  } catch (error) {
    throw new FailedPreconditionError(`state directory ${stateDir} is not usable`, {
      reason: "STATE_DIR_ABSENT",
      cause: error,
    });
  }
  const stats = await lstat(stateDir);
  if (real !== stateDir || !stats.isDirectory()) {
    throw new FailedPreconditionError(`state directory ${stateDir} must be a directory at its canonical path`, {
      reason: "STATE_DIR_NOT_CANONICAL",
    });
  }
}

async function lstatOrRefuse(component: string, path: string): Promise<Stats> {
  try {
    return await lstat(component);
  } catch (error) {
    throw openError(error, path);
  }
}

function checkRegularSingleLink(stats: Stats, path: string): void {
  if (!stats.isFile()) {
    throw new InvalidArgumentError(`${path} is not a regular file`, { reason: "NOT_REGULAR_FILE" });
  }
  if (stats.nlink !== 1) {
    throw new PermissionDeniedError(`${path} has ${stats.nlink} hard links; banger's files have one`, {
      reason: "HARD_LINKED_FILE",
    });
  }
}

/** The owner's files only: the helper's access is never lent to a file the owner could not open itself. */
function checkOwner(stats: Stats, path: string, ownerUid: number): void {
  if (stats.uid !== ownerUid) {
    throw new PermissionDeniedError(`${path} belongs to uid ${stats.uid}, not to banger's owner (uid ${ownerUid})`, {
      reason: "NOT_OWNERS_FILE",
    });
  }
}

function openError(error: unknown, path: string): Error {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === "ENOENT") return new NotFoundError(`${path} does not exist`, { reason: "PATH_NOT_FOUND", cause: error });
  if (code === "ELOOP")
    return new PermissionDeniedError(`${path} is a symlink`, { reason: "SYMLINK_IN_PATH", cause: error });
  if (code === "ENOTDIR") {
    return new InvalidArgumentError(`a component of ${path} is not a directory`, {
      reason: "NOT_A_DIRECTORY",
      cause: error,
    });
  }
  return error instanceof Error ? error : new Error(String(error));
}
