/**
 * Whether a published image's root filesystem is clean, asked once per file
 * as it is now. A create's root disk is a fresh copy of that file (a sparse
 * clone, or a snapshot over it with an empty COW store): byte for byte the
 * image, so `e2fsck -fy` on it would find what `e2fsck -fn` found on the
 * image, and change nothing when that was clean. The create's own fsck is
 * then left out (core/vm/create.ts) when the file had the same identity
 * (device, inode, size, mtime, ctime) before the copy and after it. banger
 * never writes a published image; a file that changed since is asked again,
 * and a check that fails to run answers "not known clean": the create checks
 * its copy as before.
 */
import { stat } from "node:fs/promises";
import { createHostRunner, type Runner } from "@banger/common";

/** Long enough for a large image on a loaded host; a check cut off only costs the create its own fsck. */
const CHECK_TIMEOUT_MS = 300_000;

/**
 * `(rootfs) => its identity now, if e2fsck found the file as it is now clean; else undefined`.
 * Creates of the same image share one check.
 */
export type CleanImageCheck = (rootfs: string) => Promise<string | undefined>;

export function createCleanImageCheck(runner: Runner = createHostRunner()): CleanImageCheck {
  const known = new Map<string, { identity: string; clean: Promise<boolean> }>();
  return async (rootfs) => {
    const identity = await identityOf(rootfs);
    if (identity === undefined) return undefined;
    const cached = known.get(rootfs);
    if (cached?.identity === identity) return (await cached.clean) ? identity : undefined;
    const entry = { identity, clean: Promise.resolve(false) };
    entry.clean = (async () => {
      try {
        // Exit 0: nothing to fix, and -n changed nothing. Unchanged while it ran, or it does not count.
        const { code } = await runner.run(["e2fsck", "-fn", rootfs], {
          signal: AbortSignal.timeout(CHECK_TIMEOUT_MS),
          okCodes: [0, 1, 4],
        });
        return code === 0 && (await identityOf(rootfs)) === identity;
      } catch {
        if (known.get(rootfs) === entry) known.delete(rootfs); // not an answer: the next create asks again
        return false;
      }
    })();
    known.set(rootfs, entry);
    return (await entry.clean) ? identity : undefined;
  };
}

async function identityOf(path: string): Promise<string | undefined> {
  try {
    const s = await stat(path, { bigint: true });
    return s.isFile() ? `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}` : undefined;
  } catch {
    return undefined;
  }
}
