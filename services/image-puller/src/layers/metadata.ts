/**
 * What extraction records instead of doing: owners, modes (setuid included),
 * mtimes, device numbers and security.capability. The puller never chowns and
 * never creates device nodes; these are restored inside the ext4 image by
 * debugfs, addressing each inode by its number.
 */
export type EntryType = "file" | "dir" | "symlink" | "char" | "block" | "fifo";

export interface EntryMeta {
  readonly type: EntryType;
  /** Permission bits incl. setuid/setgid/sticky (07777). */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** Seconds since the epoch, as the layer says. */
  readonly mtime?: number;
  readonly devMajor?: number;
  readonly devMinor?: number;
  /** security.capability, raw bytes. */
  readonly capability?: Buffer;
}

/**
 * Tree paths ("etc/passwd", no leading slash) to their recorded metadata. A
 * path holds one byte a character ("latin1"), so a name that is not UTF-8 is
 * a key like any other: `Buffer.from(path, "latin1")` is its bytes.
 */
export type MetadataMap = Map<string, EntryMeta>;

/** Removes `path` and everything below it from the map. */
export function forgetTree(meta: MetadataMap, path: string): void {
  meta.delete(path);
  const prefix = `${path}/`;
  for (const key of [...meta.keys()]) if (key.startsWith(prefix)) meta.delete(key);
}

/** A name or path (one byte a character) as people read it: UTF-8, JSON-quoted, its first 200 bytes. */
export function shownName(name: string): string {
  return JSON.stringify(Buffer.from(name.slice(0, 200), "latin1").toString("utf8"));
}
