import { readdir, rm, statfs } from "node:fs/promises";
import { join } from "node:path";

/** Room left on the scratch file system after a pull's tree, so a pull never fills memory. */
const SPARE_BYTES = 1024 ** 3;

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
};

/**
 * A fast scratch directory for unpacked trees: `root` (tmpfs, /dev/shm) when
 * it has room for `neededBytes` plus a spare gigabyte, else undefined (the
 * tree then goes beside the staging directory). Unpacking thousands of small
 * files is several times faster on tmpfs. Trees left by a puller that died
 * (`banger-pull-<pid>-…` of a pid that is gone) are removed first.
 */
export function createScratchDir(root = "/dev/shm"): (neededBytes: number) => Promise<string | undefined> {
  return async (neededBytes) => {
    let stats;
    try {
      stats = await statfs(root);
    } catch {
      return undefined;
    }
    for (const name of await readdir(root).catch(() => [])) {
      const pid = Number(/^banger-pull-(\d+)-/.exec(name)?.[1]);
      if (pid && pid !== process.pid && !alive(pid)) await rm(join(root, name), { recursive: true, force: true });
    }
    const free = stats.bavail * stats.bsize;
    if (free < neededBytes + SPARE_BYTES) return undefined;
    const dir = join(root, `banger-pull-${process.pid}-`);
    return dir;
  };
}
