/**
 * The directories and log files `dev up` makes. Under sudo it runs as root in the directories of
 * the user behind sudo, who may rename anything in them at any moment: so root never follows a
 * name there twice. A directory is opened once (not through a symlink) and checked to be the
 * user's; a log file is opened inside that open directory, not through a symlink, and must be a
 * regular file with one link belonging to the user (or root, from an older `dev up`).
 */
import { closeSync, constants, fchmodSync, fchownSync, fstatSync, mkdirSync, openSync, readdirSync } from "node:fs";
import { basename, dirname } from "node:path";

export interface DevUser {
  readonly uid: number;
  readonly gid: number;
}

/** An open directory of `dev up`'s; `at(name)` names an entry through it, never through the path. */
export interface OpenDir {
  readonly path: string;
  readonly fd: number;
  at(name: string): string;
  close(): void;
}

const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

/**
 * Makes `path` (mode 0700) if absent, opens it and, under sudo, checks it is `user`'s: one root
 * just made is handed over through its descriptor; any other one must already be the user's.
 * Without a user (not under sudo) no one else is involved: it is opened as it is.
 */
export function openOwnedDir(path: string, user: DevUser | undefined, parent?: OpenDir): OpenDir {
  const name = parent ? parent.at(basename(path)) : path;
  if (!parent) mkdirSync(dirname(path), { recursive: true, mode: user ? 0o755 : 0o700 });
  let made = false;
  try {
    mkdirSync(name, { mode: 0o700 });
    made = true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  }
  let fd: number;
  try {
    fd = openSync(name, user ? DIR_FLAGS : DIR_FLAGS & ~constants.O_NOFOLLOW);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== "ELOOP" && code !== "ENOTDIR") throw error;
    throw new Error(`${path} is a symlink or not a directory; banger dev uses only real directories`);
  }
  try {
    const stats = fstatSync(fd);
    if (user && made && stats.uid === 0 && readdirSync(`/proc/self/fd/${fd}`).length === 0) {
      fchownSync(fd, user.uid, user.gid);
    } else if (user && stats.uid !== user.uid) {
      throw new Error(
        `${path} belongs to uid ${stats.uid}, not to uid ${user.uid} (the owner): banger dev takes ` +
          `no one else's directory (choose another, or chown it to uid ${user.uid})`,
      );
    }
  } catch (error) {
    closeSync(fd);
    throw error;
  }
  return { path, fd, at: (entry) => `/proc/self/fd/${fd}/${entry}`, close: () => closeSync(fd) };
}

/**
 * Opens `<dir>/<name>` for appending: made (0600, the user's) if absent; an existing one must be a
 * regular file with one link, the user's or root's. A symlink planted there is refused, never followed.
 */
export function openLogFile(dir: OpenDir, name: string, user: DevUser | undefined): number {
  const path = `${dir.path}/${name}`;
  const write = constants.O_WRONLY | constants.O_APPEND | constants.O_NOFOLLOW;
  let fd: number;
  try {
    fd = openSync(dir.at(name), write | constants.O_CREAT | constants.O_EXCL, 0o600);
    if (user) fchownSync(fd, user.uid, user.gid);
    return fd;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  }
  try {
    // O_NONBLOCK: a FIFO planted there must not hang the open.
    fd = openSync(dir.at(name), write | constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== "ELOOP" && code !== "ENXIO") throw error;
    throw new Error(`log file ${path} is a symlink or not a regular file; remove it`);
  }
  const stats = fstatSync(fd);
  const uids = [user?.uid ?? process.geteuid?.() ?? 0, 0];
  if (!stats.isFile() || stats.nlink !== 1 || !uids.includes(stats.uid)) {
    closeSync(fd);
    throw new Error(
      `log file ${path} is not a regular file with one link of uid ${uids[0]} (uid ${stats.uid}, ${stats.nlink} link(s)); remove it`,
    );
  }
  return fd;
}

/**
 * Makes (0755) and opens a directory that must be root's and writable by no one else: the parent of a
 * `dev up` run as root's per-owner directories (dev-dirs.ts). Only root can make a name in it, so the
 * owner's directory there cannot be planted or swapped; one that is not root's, or is group- or
 * world-writable, is refused (chmod or remove it); one others cannot enter is made 0755.
 */
export function openRootDir(path: string): OpenDir {
  mkdirSync(path, { recursive: true, mode: 0o755 });
  let fd: number;
  try {
    fd = openSync(path, DIR_FLAGS);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== "ELOOP" && code !== "ENOTDIR") throw error;
    throw new Error(`${path} is a symlink or not a directory; banger dev uses only real directories`);
  }
  const stats = fstatSync(fd);
  if (stats.uid !== 0 || (stats.mode & 0o022) !== 0) {
    closeSync(fd);
    throw new Error(
      `${path} must be root's and writable by no one else (it is uid ${stats.uid}'s, mode ` +
        `${(stats.mode & 0o7777).toString(8)}): it holds each owner's dev directories; fix or remove it`,
    );
  }
  // Every owner must reach its own directory in it (one made 0700 by hand would lock them out).
  if ((stats.mode & 0o7777) !== 0o755) fchmodSync(fd, 0o755);
  return { path, fd, at: (entry) => `/proc/self/fd/${fd}/${entry}`, close: () => closeSync(fd) };
}
