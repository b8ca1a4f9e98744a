/**
 * Images built before, kept by manifest digest and build settings, so that a
 * re-pull of the same image copies its files instead of downloading and
 * building them again: `<dir>/<key>/{rootfs.ext4,work-seed.ext4,manifest.json}`.
 *
 * Entries are copies, never hard links: the privileged helper attaches only
 * files with exactly one link. Copies keep holes and share extents where the
 * file system can (`cp --reflink=auto --sparse=always`), so an ext4 image
 * mostly made of free space costs what its data costs. A build is kept in the
 * background from open file descriptors, so the orchestrator may rename (or
 * delete) the staging directory meanwhile; an entry appears under its key
 * with one rename, complete or not at all.
 */
import { createHash } from "node:crypto";
import { mkdir, open, readdir, readFile, rename, rm, stat, utimes, writeFile, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { copySparse } from "@banger/common/copy-file";
import { processIsAlive } from "@banger/common/process-info";
import type { BuildKey, BuiltCache } from "../core/ports.js";

/** The stored PullResult; every other file of an entry is copied into the staging directory. */
const RESULT = "result.json";
const TEMP_NAME = /^\.([a-f0-9]{64})\.([0-9]+)\.tmp$/;

async function diskBytes(dir: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir).catch(() => [])) {
    const info = await stat(join(dir, name)).catch(() => undefined);
    if (info) total += info.blocks * 512;
  }
  return total;
}

/** One cache's state: its directory, the keeps running (by key) and the restores running (counted, by key). */
interface CacheState {
  readonly dir: string;
  readonly keeping: Map<string, Promise<void>>;
  readonly restoring: Map<string, number>;
}

export function createBuiltCache(dir: string): BuiltCache {
  const cache: CacheState = { dir, keeping: new Map(), restoring: new Map() };
  return {
    key,
    restore: (entryKey, stagingDir) => restore(cache, entryKey, stagingDir),
    keep: (entryKey, stagingDir, files, result) => keep(cache, entryKey, stagingDir, files, result),
    settled: () => settled(cache),
    prune: (before) => prune(cache, before),
  };
}

function key(build: BuildKey): string {
  return createHash("sha256")
    .update(
      JSON.stringify([
        build.manifestDigest,
        build.minRootfsMib,
        build.headroomPercent,
        build.inodeMarginPercent,
        build.skipWorkSeed,
      ]),
    )
    .digest("hex");
}

async function restore(cache: CacheState, entryKey: string, stagingDir: string): Promise<unknown> {
  const { dir, keeping, restoring } = cache;
  await keeping.get(entryKey);
  restoring.set(entryKey, (restoring.get(entryKey) ?? 0) + 1);
  const entry = join(dir, entryKey);
  let names: string[] = [];
  try {
    const result: unknown = JSON.parse(await readFile(join(entry, RESULT), "utf8"));
    names = (await readdir(entry)).filter((name) => name !== RESULT);
    for (const name of names) await copySparse(join(entry, name), join(stagingDir, name));
    const now = new Date();
    await utimes(entry, now, now).catch(() => undefined); // last used, for prune
    return result;
  } catch {
    for (const name of names) await rm(join(stagingDir, name), { force: true });
    return undefined; // none, pruned, or no room: build instead
  } finally {
    const left = (restoring.get(entryKey) ?? 1) - 1;
    if (left === 0) restoring.delete(entryKey);
    else restoring.set(entryKey, left);
  }
}

async function keep(
  cache: CacheState,
  entryKey: string,
  stagingDir: string,
  files: readonly string[],
  result: unknown,
): Promise<void> {
  const { dir, keeping } = cache;
  if (keeping.has(entryKey)) return;
  const handles: [string, FileHandle][] = [];
  try {
    for (const name of files) handles.push([name, await open(join(stagingDir, name), "r")]);
  } catch {
    for (const [, handle] of handles) await handle.close();
    return;
  }
  const temporary = join(dir, `.${entryKey}.${process.pid}.tmp`);
  const work = (async () => {
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await rm(temporary, { recursive: true, force: true });
      await mkdir(temporary, { mode: 0o700 });
      for (const [name, handle] of handles) await copySparse("/dev/fd/3", join(temporary, name), { fd: handle.fd });
      await writeFile(join(temporary, RESULT), JSON.stringify(result), { mode: 0o644 });
      await rm(join(dir, entryKey), { recursive: true, force: true });
      await rename(temporary, join(dir, entryKey));
    } catch {
      await rm(temporary, { recursive: true, force: true });
    } finally {
      for (const [, handle] of handles) await handle.close();
      keeping.delete(entryKey);
    }
  })();
  keeping.set(entryKey, work);
}

async function settled({ keeping }: CacheState): Promise<void> {
  while (keeping.size > 0) await Promise.all(keeping.values());
}

async function prune(cache: CacheState, before: Date): Promise<{ removed: number; freedBytes: number }> {
  const { dir, keeping, restoring } = cache;
  let removed = 0;
  let freedBytes = 0;
  for (const name of await readdir(dir).catch(() => [])) {
    const temp = TEMP_NAME.exec(name);
    if (temp !== null) {
      const pid = Number(temp[2]);
      if (pid === process.pid ? keeping.has(temp[1] ?? "") : processIsAlive(pid)) continue;
    } else if (keeping.has(name) || restoring.has(name)) {
      continue;
    } else {
      const info = await stat(join(dir, name)).catch(() => undefined);
      if (info === undefined || info.mtime >= before) continue;
    }
    freedBytes += await diskBytes(join(dir, name));
    await rm(join(dir, name), { recursive: true, force: true });
    if (temp === null) removed += 1;
  }
  return { removed, freedBytes };
}
