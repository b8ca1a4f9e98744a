/**
 * Reading what `debugfs -f -` prints: banger writes and checks ext4 images
 * with debugfs (no mount) in the privileged helper (root disks) and in the
 * orchestrator (work disks), and both read its output the same way.
 */

/** What debugfs `stat` says about an inode. */
export interface DebugfsStat {
  /** "regular", "directory", "symlink", … */
  readonly type: string;
  /** Permission bits (07777). */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly size: number;
}

/**
 * Splits the output of `debugfs -f -` by command: debugfs echoes each command
 * as `debugfs: <command>` before its output (errors go to stderr).
 */
export function debugfsSections(stdout: string): Map<string, string> {
  const sections = new Map<string, string>();
  let current: string | undefined;
  for (const line of stdout.split("\n")) {
    if (line.startsWith("debugfs: ")) {
      current = line.slice("debugfs: ".length);
      sections.set(current, "");
    } else if (current !== undefined) {
      sections.set(current, `${sections.get(current) ?? ""}${line}\n`);
    }
  }
  return sections;
}

/** The inode a `stat` section describes; undefined when it names none (the path does not exist). */
export function parseDebugfsStat(text: string): DebugfsStat | undefined {
  const head = /^Inode: \d+\s+Type: (\S+)\s+Mode:\s+([0-7]+)/m.exec(text);
  // debugfs prints uid/gid as signed 32-bit numbers (4294967294 shows as -2).
  const owner = /^User:\s+(-?\d+)\s+Group:\s+(-?\d+)(?:\s+Project:\s+-?\d+)?\s+Size:\s+(\d+)/m.exec(text);
  if (!head?.[1] || !head[2] || !owner?.[1] || !owner[2] || !owner[3]) return undefined;
  return {
    type: head[1],
    mode: parseInt(head[2], 8),
    uid: Number(owner[1]) >>> 0,
    gid: Number(owner[2]) >>> 0,
    size: Number(owner[3]),
  };
}

/** debugfs's complaints (without its version banner), as a `: …` suffix for a message; empty if none. */
export function debugfsErrors(stderr: string): string {
  const lines = stderr.split("\n").filter((l) => l.trim() !== "" && !/^debugfs \d/.test(l));
  return lines.length > 0 ? `: ${lines.slice(-5).join("; ")}` : "";
}

/**
 * A failure of debugfs to write back what its session changed (bitmaps, the
 * superblock, cached blocks) when it closed the file system: reported on
 * stderr under the library call's name, after every command's output. A
 * session that reads its own writes back is only as good as this close.
 */
export function debugfsCloseFailure(stderr: string): string | undefined {
  return stderr
    .split("\n")
    .find((l) => /^ext2fs_(close|flush|write_inode_bitmap|write_block_bitmap)\b/.test(l.trim()))
    ?.trim();
}
