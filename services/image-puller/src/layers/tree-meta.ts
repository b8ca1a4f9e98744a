/**
 * What of the recorded metadata the tree itself carries, so that `mkfs.ext4
 * -d`, which copies each file's mode and mtime into the image, leaves the
 * ownership pass only what the tree cannot hold: owners (the puller cannot
 * chown), setuid, setgid and sticky bits (never set on a file of the
 * puller's), permissions the puller would lose its own access by (an owner
 * without read, a directory without rwx), devices and capabilities. A file's
 * mode and mtime are set through its open descriptor as it is written; a
 * directory's and a symlink's at the end, once no entry changes them any more,
 * never following a symlink. ext4/image.ts sets by inode whatever the image
 * still lists otherwise, so the tree is only a shortcut: a mode the tree could
 * not take is still right in the image.
 */
import { closeSync, constants, fchmodSync, futimesSync, lutimesSync, openSync } from "node:fs";
import type { EntryMeta, MetadataMap } from "./metadata.js";
import { bytesOf } from "./tree.js";

/** ext4's 32-bit seconds: a recorded mtime outside them keeps the build's. */
export function treeMtime(meta: EntryMeta): number | undefined {
  const { mtime } = meta;
  return mtime !== undefined && mtime >= 0 && mtime <= 0x7fffffff ? mtime : undefined;
}

/** The permission bits the tree holds for `meta`: no setuid/setgid/sticky, the puller's own access kept. */
export function treeMode(meta: EntryMeta): number {
  return (meta.mode & 0o777) | (meta.type === "dir" ? 0o700 : 0o400);
}

/** Mode and mtime of a regular file through its descriptor, after its bytes are written. */
export function settleFile(fd: number, meta: EntryMeta): void {
  fchmodSync(fd, treeMode(meta));
  const mtime = treeMtime(meta);
  if (mtime !== undefined) futimesSync(fd, mtime, mtime);
}

/**
 * Modes and mtimes of the tree's directories and symlinks, once every layer
 * is applied: a directory opened without following a symlink, then changed
 * through its descriptor; a symlink's own mtime (its mode is always 0777).
 */
export function settleTree(treeDir: string, meta: MetadataMap): void {
  const prefix = Buffer.from(`${treeDir}/`);
  const flags = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
  for (const [path, m] of meta) {
    if (m.type !== "dir" && m.type !== "symlink") continue;
    const abs = Buffer.concat([prefix, bytesOf(path)]);
    const mtime = treeMtime(m);
    if (m.type === "symlink") {
      if (mtime !== undefined) lutimesSync(abs, mtime, mtime);
      continue;
    }
    const fd = openSync(abs, flags);
    try {
      fchmodSync(fd, treeMode(m));
      if (mtime !== undefined) futimesSync(fd, mtime, mtime);
    } finally {
      closeSync(fd);
    }
  }
}
