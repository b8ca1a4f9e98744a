/**
 * What extraction records instead of doing: owners, modes (setuid included),
 * device numbers and security.capability. The puller never chowns and never
 * creates device nodes; these are restored inside the ext4 image by debugfs.
 */
export type EntryType = "file" | "dir" | "symlink" | "char" | "block" | "fifo";

export interface EntryMeta {
  readonly type: EntryType;
  /** Permission bits incl. setuid/setgid/sticky (07777). */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly devMajor?: number;
  readonly devMinor?: number;
  /** security.capability, raw bytes. */
  readonly capability?: Buffer;
}

/** Tree paths ("etc/passwd", no leading slash) to their recorded metadata. */
export type MetadataMap = Map<string, EntryMeta>;

/** Removes `path` and everything below it from the map. */
export function forgetTree(meta: MetadataMap, path: string): void {
  meta.delete(path);
  const prefix = `${path}/`;
  for (const key of [...meta.keys()]) if (key.startsWith(prefix)) meta.delete(key);
}
