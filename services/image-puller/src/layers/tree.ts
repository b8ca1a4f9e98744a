/**
 * The staging tree a layer is applied to, and the confinement of every name
 * in it: names are checked (no `..`, no NUL, no component longer than ext4's
 * 255 bytes; a leading `/` is stripped as tar does, so absolute names stay
 * inside), every parent component must be a real directory inside the tree,
 * and hardlinks must point at a regular file already in the tree, reached one
 * directory at a time without following a symlink.
 *
 * Synchronous file system calls on purpose: a layer is thousands of small
 * entries applied strictly in order, and a thread-pool round trip per call
 * (lstat, open, write, close) costs more than the calls themselves.
 */
import {
  closeSync,
  constants,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  rmSync,
  type PathLike,
  type Stats,
} from "node:fs";
import { InvalidArgumentError } from "@banger/common/errors";
import { forgetTree, shownName, type MetadataMap } from "./metadata.js";

/** A path longer than Linux's PATH_MAX, or a name longer than ext4's, cannot be in an image. */
const MAX_PATH_BYTES = 4095;
const MAX_NAME_BYTES = 255;

export function hostile(entry: string, why: string): InvalidArgumentError {
  return new InvalidArgumentError(`hostile layer entry ${shownName(entry)}: ${why}`, { reason: "HOSTILE_LAYER" });
}

export function lstatOrNone(path: PathLike): Stats | undefined {
  try {
    // Nothing there is the common case (every new entry): no exception built for it.
    return lstatSync(path, { throwIfNoEntry: false });
  } catch {
    return undefined;
  }
}

/**
 * "./a/b/" or "/a/b" → "a/b", for a name read one byte a character. Refuses
 * only what no Linux file system can hold: `..`, NUL, a component longer
 * than 255 bytes (ext4's limit) or a path longer than PATH_MAX. Any other
 * byte (newlines, quotes, backslashes, non-UTF-8) is a name like any other.
 */
export function treePath(name: string): string {
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.length === 0) return "";
  for (const part of parts) {
    if (part === "..") throw hostile(name, "a `..` component would leave the tree");
    if (part.includes("\0")) throw hostile(name, "a NUL byte in a name");
    if (part.length > MAX_NAME_BYTES) {
      throw hostile(name, `a name of ${part.length} bytes, longer than the ${MAX_NAME_BYTES} ext4 can hold`);
    }
  }
  const path = parts.join("/");
  if (path.length > MAX_PATH_BYTES) throw hostile(name, `a path longer than ${MAX_PATH_BYTES} bytes`);
  return path;
}

/** A tree path (one byte a character) as the file system takes it. */
export const bytesOf = (path: string) => Buffer.from(path, "latin1");

/** Opens directory `dir` (a tree path) one component at a time, never through a symlink: its fd, or undefined. */
function openTreeDir(treeDir: string, dir: string): number | undefined {
  const flags = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
  let fd = openSync(treeDir, flags);
  for (const part of dir === "" ? [] : dir.split("/")) {
    let next: number;
    try {
      next = openSync(bytesOf(`/proc/self/fd/${fd}/${part}`), flags);
    } catch {
      closeSync(fd);
      return undefined; // missing, a symlink (ELOOP) or not a directory
    }
    closeSync(fd);
    fd = next;
  }
  return fd;
}

/** One layer's view of the tree: where it is, its recorded metadata, and what this layer proved or made. */
export interface LayerTree {
  readonly dir: string;
  readonly meta: MetadataMap;
  /** Paths this layer made: an opaque whiteout in it leaves them. */
  readonly createdHere: Set<string>;
  /** Directories already proved real in this layer; anything `clear` touches leaves it. */
  readonly provenDirs: Set<string>;
  /** A tree path as an absolute path the file system takes (bytes). */
  abs(path: string): Buffer;
}

export function layerTree(dir: string, meta: MetadataMap): LayerTree {
  const prefix = Buffer.from(`${dir}/`);
  return {
    dir,
    meta,
    createdHere: new Set(),
    provenDirs: new Set(),
    abs: (path) => Buffer.concat([prefix, bytesOf(path)]),
  };
}

/** Every parent of `path` is a real directory inside the tree (made if missing). */
export function parentsOf(tree: LayerTree, path: string, entry: string): void {
  const parts = path.split("/").slice(0, -1);
  let current = "";
  for (const part of parts) {
    current = current ? `${current}/${part}` : part;
    if (tree.provenDirs.has(current)) continue;
    const stats = lstatOrNone(tree.abs(current));
    if (!stats) {
      mkdirSync(tree.abs(current), { mode: 0o755 });
      tree.meta.set(current, { type: "dir", mode: 0o755, uid: 0, gid: 0 });
      tree.createdHere.add(current);
    } else if (stats.isSymbolicLink()) {
      throw hostile(entry, `its parent ${current} is a symlink`);
    } else if (!stats.isDirectory()) {
      throw hostile(entry, `its parent ${current} is not a directory`);
    }
    tree.provenDirs.add(current);
  }
}

/** Removes whatever is at `path` (a file, link or whole directory), never following a link. */
export function clear(tree: LayerTree, path: string): void {
  const stats = lstatOrNone(tree.abs(path));
  if (!stats) return; // nothing there: the common case, kept cheap
  rmSync(tree.abs(path), { recursive: stats.isDirectory(), force: true });
  forgetTree(tree.meta, path);
  tree.provenDirs.delete(path);
  for (const dir of tree.provenDirs) if (dir.startsWith(`${path}/`)) tree.provenDirs.delete(dir);
}

/**
 * A hardlink to `target`, an existing regular file of the tree, reached from
 * the tree's root one directory at a time (O_NOFOLLOW, each opened through
 * the one before): a symlinked component (`a -> /home/me/.ssh`, then a link
 * to `a/id_ed25519`) is refused, never followed out of the tree.
 */
export function hardlink(tree: LayerTree, path: string, target: string, entry: string, linkname: string): void {
  const slash = target.lastIndexOf("/");
  const dirFd =
    target === "" || target === path ? undefined : openTreeDir(tree.dir, target.slice(0, Math.max(slash, 0)));
  try {
    const source = bytesOf(`/proc/self/fd/${dirFd}/${target.slice(slash + 1)}`);
    if (dirFd === undefined || !lstatOrNone(source)?.isFile()) {
      throw hostile(
        entry,
        `hardlink to ${linkname}, which is not a file in the image (reached without following a symlink)`,
      );
    }
    clear(tree, path);
    linkSync(source, tree.abs(path)); // link(2) does not follow a symlink in its last component either
  } finally {
    if (dirFd !== undefined) closeSync(dirFd);
  }
}
