/**
 * Files written into (and removed from) a VM's root filesystem with one batched `debugfs` script,
 * run as the owner, then verified by reading them back: type, mode, owner and the exact bytes (a
 * write reads back at the end of its own session).
 */
import { FailedPreconditionError, InvalidArgumentError } from "@banger/common/errors";
import {
  debugfsCloseFailure,
  debugfsErrors,
  debugfsSections,
  parseDebugfsStat,
  type DebugfsStat,
} from "@banger/common/debugfs";
import { withPrivateTempDir, type OwnersFile } from "../../host/private-temp-dir.js";
import { MAX_GUEST_FILES, validGuestFiles } from "../../validate/disk.js";
import { guestParents, validGuestPath } from "../../validate/guest-paths.js";
import { validVmId } from "../../validate/ids.js";
import type { DiskContext } from "./context.js";
import { debugfs, withRootDisk, type RootDisk } from "./root-disk.js";
import type { GuestFileSpec } from "./types.js";

/** `stat` of each guest path (read-only); undefined for the missing ones. */
async function statGuest(
  ctx: DiskContext,
  disk: RootDisk,
  paths: readonly string[],
  signal?: AbortSignal,
): Promise<Map<string, DebugfsStat | undefined>> {
  const { stdout } = await debugfs(
    ctx,
    disk,
    paths.map((p) => `stat ${p}`),
    false,
    signal,
  );
  return statsOf(stdout, paths);
}

/** The `stat` sections of a debugfs session's output, by path. */
function statsOf(stdout: string, paths: readonly string[]): Map<string, DebugfsStat | undefined> {
  const sections = debugfsSections(stdout);
  return new Map(paths.map((p) => [p, parseDebugfsStat(sections.get(`stat ${p}`) ?? "")]));
}

/** Writes `files` into the disk with one debugfs script, then reads them back. */
async function writeFiles(ctx: DiskContext, disk: RootDisk, files: readonly GuestFileSpec[], signal?: AbortSignal) {
  // The last spec for each path is what the filesystem must hold at the end.
  const final = new Map(files.map((f) => [f.path, f]));
  const paths = [...final.keys()];
  const parents = [...new Set(paths.flatMap(guestParents))].filter((p) => !final.has(p));
  const before = await statGuest(ctx, disk, [...paths, ...parents], signal);
  refuseDirectories(new Map(paths.map((p) => [p, before.get(p)])));
  const notDirs = parents.filter((p) => {
    const type = before.get(p)?.type;
    return type !== undefined && type !== "directory" && type !== "symlink";
  });
  if (notDirs.length > 0) {
    throw new FailedPreconditionError(`${notDirs.join(", ")} is not a directory in the guest`, {
      reason: "GUEST_PARENT_NOT_DIRECTORY",
    });
  }

  await withPrivateTempDir(ctx.config, async (dir) => {
    const script: string[] = [];
    // Parents that exist (or will, once made) get no mkdir: debugfs has no `mkdir -p`.
    const made = new Set(parents.filter((p) => before.get(p) !== undefined));
    const existing = new Set(paths.filter((p) => before.get(p) !== undefined));
    for (const [i, file] of files.entries()) {
      const { path: source } = await dir.ownersFile(`f${i}`, file.content);
      for (const parent of guestParents(file.path)) {
        if (!made.has(parent)) script.push(`mkdir ${parent}`);
        made.add(parent);
      }
      if (existing.has(file.path)) script.push(`rm ${file.path}`);
      script.push(
        `write ${source} ${file.path}`,
        `sif ${file.path} mode 0${(0o100000 | file.mode).toString(8)}`,
        `sif ${file.path} uid ${file.uid}`,
        `sif ${file.path} gid ${file.gid}`,
      );
      existing.add(file.path);
    }
    // Verified by reading back, in the same session (what it wrote reaches the disk when it closes,
    // which it reports when it fails): type, mode, owner and the exact bytes.
    const dumps: OwnersFile[] = [];
    for (const [i, path] of paths.entries()) {
      const dump = await dir.ownersFile(`v${i}`, new Uint8Array());
      dumps.push(dump);
      script.push(`stat ${path}`, `dump ${path} ${dump.path}`);
    }
    const { stdout, stderr } = await debugfs(ctx, disk, script, true, signal);
    const after = statsOf(stdout, paths);
    const closeFailure = debugfsCloseFailure(stderr);
    const wrong: string[] = closeFailure === undefined ? [] : [`closing the file system: ${closeFailure}`];
    for (const [i, path] of paths.entries()) {
      const want = final.get(path);
      const got = after.get(path);
      if (!want || !got) {
        wrong.push(`${path}: missing`);
        continue;
      }
      if (got.type !== "regular" || got.mode !== want.mode || got.uid !== want.uid || got.gid !== want.gid) {
        wrong.push(`${path}: ${got.type} mode 0${got.mode.toString(8)} owner ${got.uid}:${got.gid}`);
      } else if (
        got.size !== want.content.byteLength ||
        !(await dumps[i]?.read(want.content.byteLength + 1))?.equals(want.content)
      ) {
        wrong.push(`${path}: content differs`);
      }
    }
    if (wrong.length > 0) {
      throw new FailedPreconditionError(
        `writing guest files on ${disk.shown} failed (${wrong.join("; ")})${debugfsErrors(stderr)}`,
        { reason: "GUEST_WRITE_FAILED" },
      );
    }
  });
  return { written: files.length };
}

/** Removes the guest files of `paths` that exist (refusing directories), then checks they are gone. */
async function removeFiles(ctx: DiskContext, disk: RootDisk, paths: readonly string[], signal?: AbortSignal) {
  const before = await statGuest(ctx, disk, paths, signal);
  refuseDirectories(before);
  const present = paths.filter((p) => before.get(p) !== undefined);
  if (present.length === 0) return { removed: 0 };
  const { stderr } = await debugfs(
    ctx,
    disk,
    present.map((p) => `rm ${p}`),
    true,
    signal,
  );
  const after = await statGuest(ctx, disk, present, signal);
  const left = present.filter((p) => after.get(p) !== undefined);
  if (left.length > 0) {
    throw new FailedPreconditionError(`could not remove ${left.join(", ")} on ${disk.shown}${debugfsErrors(stderr)}`, {
      reason: "GUEST_REMOVE_FAILED",
    });
  }
  return { removed: present.length };
}

export async function writeGuestFiles(
  ctx: DiskContext,
  req: { vmId: string; files: readonly GuestFileSpec[] },
  signal?: AbortSignal,
): Promise<{ written: number }> {
  const vmId = validVmId(req.vmId);
  const files = validGuestFiles(req.files);
  if (files.length === 0) return { written: 0 };
  return withRootDisk(ctx, vmId, signal, (disk) => writeFiles(ctx, disk, files, signal));
}

export async function removeGuestFiles(
  ctx: DiskContext,
  req: { vmId: string; paths: readonly string[] },
  signal?: AbortSignal,
): Promise<{ removed: number }> {
  const vmId = validVmId(req.vmId);
  if (req.paths.length > MAX_GUEST_FILES) {
    throw new InvalidArgumentError(`at most ${MAX_GUEST_FILES} paths`, { reason: "TOO_MANY_FILES" });
  }
  const paths = [...new Set(req.paths.map((p, i) => validGuestPath(p, `paths[${i}]`)))];
  if (paths.length === 0) return { removed: 0 };
  return withRootDisk(ctx, vmId, signal, (disk) => removeFiles(ctx, disk, paths, signal));
}

function refuseDirectories(stats: Map<string, DebugfsStat | undefined>): void {
  const dirs = [...stats].filter(([, s]) => s?.type === "directory").map(([p]) => p);
  if (dirs.length > 0) {
    throw new FailedPreconditionError(`${dirs.join(", ")} is a directory in the guest`, {
      reason: "GUEST_PATH_IS_DIRECTORY",
    });
  }
}
