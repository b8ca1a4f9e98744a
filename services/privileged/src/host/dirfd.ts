/**
 * Files named relative to an open directory (`/proc/self/fd/<dir>/<name>`, the openat of Node):
 * the kernel resolves the directory from the descriptor, so a directory or symlink the owner swaps
 * in while the helper works cannot redirect a mkdir, a chown, a create or a removal elsewhere. The
 * VM runtime directories (`<runtime>/vms/<vm_id>/`) are made, read and removed only through these.
 */
import { constants, type Stats } from "node:fs";
import { lstat, mkdir, open, readdir, rmdir, unlink, type FileHandle } from "node:fs/promises";
import { FailedPreconditionError } from "@banger/common/errors";
import type { Runner } from "@banger/common/host-runner";

/** `name` inside an open directory: the kernel resolves the directory from the fd, not from a path. */
export function at(dir: FileHandle, name: string): string {
  return `/proc/self/fd/${dir.fd}/${name}`;
}

export function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

export const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

/** Opens (making it if absent) the directory `name` inside `parent`; a symlink or non-directory is refused. */
export async function openOrMakeDir(
  parent: FileHandle,
  name: string,
  mode: number,
  shownPath: string,
): Promise<{ dir: FileHandle; made: boolean }> {
  let made = false;
  try {
    await mkdir(at(parent, name), { mode });
    made = true;
  } catch (error) {
    if (errnoOf(error) !== "EEXIST") throw error;
  }
  let dir: FileHandle;
  try {
    dir = await open(at(parent, name), DIR_FLAGS);
  } catch (error) {
    const code = errnoOf(error);
    if (code === "ELOOP" || code === "ENOTDIR") {
      throw new FailedPreconditionError(`${shownPath} is not a directory`, {
        reason: "RUNTIME_DIR_UNSAFE",
        cause: error,
      });
    }
    throw error;
  }
  return { dir, made };
}

/** `<runtime>/vms` must be root's and writable by no one else: the VM directories' entries are then root's to change. */
export async function checkRootsDir(dir: FileHandle, shownPath: string): Promise<void> {
  const stats = await dir.stat();
  if (stats.uid !== 0 || (stats.mode & 0o022) !== 0) {
    throw new FailedPreconditionError(`${shownPath} must be root's and writable by no one else`, {
      reason: "RUNTIME_DIR_UNSAFE",
    });
  }
}

export async function openRuntimeDir(runtimeDir: string): Promise<FileHandle> {
  try {
    return await open(runtimeDir, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (error) {
    throw new FailedPreconditionError(`runtime directory ${runtimeDir} is not usable`, {
      reason: "RUNTIME_DIR_ABSENT",
      cause: error,
    });
  }
}

/** Removes what a dead VMM left at its socket path (Firecracker refuses to start over a stale socket). */
export async function clearSocketPath(vmDir: FileHandle, name: string, shownPath: string): Promise<void> {
  let stats: Stats;
  try {
    stats = await lstat(at(vmDir, name));
  } catch (error) {
    if (errnoOf(error) === "ENOENT") return;
    throw error;
  }
  if (stats.isDirectory()) {
    throw new FailedPreconditionError(`${shownPath} is a directory`, { reason: "SOCKET_PATH_OCCUPIED" });
  }
  await unlink(at(vmDir, name));
}

/**
 * The last lines of a log the relay wrote (for an error message). Opened in the open VM directory
 * without following a symlink or blocking on a FIFO, and read only if it is a regular file of the owner's.
 */
export async function logTail(vmDir: FileHandle, name: string, ownerUid: number, bytes = 2048): Promise<string> {
  let handle: FileHandle;
  try {
    handle = await open(at(vmDir, name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return "";
  }
  try {
    const stats = await handle.stat();
    if (!stats.isFile() || stats.uid !== ownerUid) return "";
    const size = stats.size;
    const length = Math.min(size, bytes);
    if (length === 0) return "";
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, size - length);
    return buffer.toString("utf8").trimEnd().split("\n").slice(-5).join("\n");
  } finally {
    await handle.close();
  }
}

/** How many times a VM directory the owner keeps filling is emptied before RemoveVmmFiles gives up. */
const EMPTY_TRIES = 3;

/**
 * Removes `<vms>/<vm_id>` (`vms` is root's, so the entry itself cannot be swapped). Below it every
 * entry is the owner's to rename at any moment, so root never walks it: the owner empties it (`find
 * -delete` as the owner, started on the open directory, so its races can only reach what the owner
 * may delete anyway), then root removes the empty directory by its entry in `vms`. One that root made
 * and never handed over holds nothing the owner could have put there.
 */
export async function removeVmDir(
  vms: FileHandle,
  vmId: string,
  owner: { uid: number; gid: number },
  runner: Runner,
  shownPath: string,
): Promise<{ existed: boolean }> {
  const entry = at(vms, vmId);
  const stats = await lstat(entry).catch((error: unknown) => {
    if (errnoOf(error) === "ENOENT") return undefined;
    throw error;
  });
  if (!stats) return { existed: false };
  if (!stats.isDirectory()) {
    // A symlink (or anything else) in place of the directory: the entry goes, never what it names.
    await unlink(entry);
    return { existed: true };
  }
  for (let attempt = 1; ; attempt++) {
    const dir = await open(entry, DIR_FLAGS);
    try {
      const mine = await dir.stat();
      if (mine.uid === owner.uid) {
        await runner.run(["find", "-H", "/proc/self/fd/3", "-mindepth", "1", "-delete"], {
          as: owner,
          fds: [dir.fd],
          okCodes: [0, 1],
        });
      } else if (mine.uid === 0 && (mine.mode & 0o022) === 0) {
        for (const name of await readdir(at(dir, ""))) await unlink(at(dir, name));
      } else {
        throw new FailedPreconditionError(`${shownPath} belongs to uid ${mine.uid}, not the owner`, {
          reason: "RUNTIME_DIR_UNSAFE",
        });
      }
    } finally {
      await dir.close();
    }
    try {
      await rmdir(entry);
      return { existed: true };
    } catch (error) {
      if (errnoOf(error) !== "ENOTEMPTY" || attempt >= EMPTY_TRIES) {
        throw new FailedPreconditionError(`${shownPath} cannot be removed: ${(error as Error).message}`, {
          reason: "VMM_FILES_BUSY",
          cause: error,
        });
      }
    }
  }
}
