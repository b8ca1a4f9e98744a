/**
 * A VM's work disk (`<state>/vms/<vm_id>/work.ext4`, mounted at /root in the
 * guest), built by the owner without root and without mounting: the image's
 * work seed is copied (or a fresh ext4 made), checked, grown, and the entries
 * from guest-files.ts are written and read back in one debugfs session, then
 * the disk is checked again (and read back once more only when that check
 * changed something). Nothing here chowns a host file: owners exist only inside
 * the disk, set with debugfs `sif`.
 *
 * debugfs quirks this code works around:
 * - it exits 0 whatever its commands did (errors go to stderr only), so the
 *   result is verified by reading it back (`stat`, `dump`) rather than trusted;
 * - older versions link `write SRC /a/b` as one entry named "/a/b" in the
 *   current directory, so each `write`/`mkdir` runs after `cd` into the parent
 *   and takes a bare name; `stat`/`sif` take absolute paths (a bare name
 *   starting with `-` could read as an option);
 * - `rm /name` looks the parent "" up as the current directory: it frees the
 *   inode, then fails to find the entry (EXT2_ET_DIR_NO_SPACE, "No free space in
 *   the directory") and leaves a dangling entry; `rm` runs after `cd` too;
 * - `mkdir` has no `-p`, ignores the wanted mode (0755 & umask) and `write`
 *   takes its mode from the host file: every mode/uid/gid is set with `sif`
 *   (`mode` is the whole i_mode, type bits included);
 * - `write` refuses an existing name, so an existing file is `rm`ed first;
 * - its commands split on white space and read `<N>` as an inode: paths are
 *   limited to debugfs-safe characters (guest-files.ts) instead of quoted;
 * - a directory it has just made can show `Inode checksum: 0x00000000` until
 *   the session ends, and it checks nothing itself: `e2fsck -fy` always runs
 *   after a write script, and `e2fsck -fn` must pass at the end.
 *
 * The commands go through a `Runner` (argv, AbortSignal, captured output,
 * exit code), so tests can script failures; `createE2fsRunner` is the real one.
 */
import { mkdtemp, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, isAbsolute, join } from "node:path";
import {
  CancelledError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  copySparse,
  createHostRunner,
  debugfsCloseFailure,
  debugfsErrors,
  debugfsSections,
  parseDebugfsStat,
  type DebugfsStat,
  type Runner,
  type Reason,
} from "@banger/common";
import { diskParents, diskPathProblem, type WorkDiskEntry } from "./guest-files.js";

const MIB = 1024 * 1024;
/** Work disk sizes accepted, in MiB. */
export const WORK_DISK_MIN_MIB = 8;
export const WORK_DISK_MAX_MIB = 1024 * 1024;
/** Temp files handed to debugfs must have a path it reads literally. */
const DEBUGFS_SAFE_HOST_PATH = /^[A-Za-z0-9._+@=:,~/-]+$/;
/** e2fsck: 0 = clean, 1 = errors corrected; 2 and up are failures. */
const E2FSCK_FIXED = [0, 1];
const MAX_ID = 4294967294;

export interface PrepareWorkDiskOptions {
  /** Absolute path of the new disk file; must not exist yet. */
  readonly target: string;
  /** The image's work seed (an ext4 file); without it a fresh empty ext4 is made. */
  readonly seedPath?: string | undefined;
  /** Size of the disk; at least the seed's file system (never shrunk). */
  readonly sizeMib: number;
  /**
   * What to write onto it (from `workDiskFiles`), with disk-relative paths. Given as a promise, it is
   * gathered while the disk is made, and checked when it arrives (before anything is written).
   */
  readonly files: readonly WorkDiskEntry[] | Promise<readonly WorkDiskEntry[]>;
  readonly signal?: AbortSignal | undefined;
  /** Default: `createHostRunner()`. */
  readonly runner?: Runner | undefined;
}

/**
 * Builds a VM's work disk at `target`: copies the seed (`cp --reflink=auto
 * --sparse=always`) or makes an empty ext4 (`mkfs.ext4 -q -F -E
 * root_owner=0:0,lazy_itable_init=1 -L banger-work`), runs `e2fsck -fy`,
 * grows it to `sizeMib` (truncate + `resize2fs`; a size below the seed's file
 * system is WORK_DISK_TOO_SMALL), writes `files` in one debugfs script
 * (missing parents made 0755 0:0; the entries' modes and owners set with
 * `sif`) and reads every entry back in the same session, runs `e2fsck -fy`
 * (when it fixed something, reads the entries back again), verifies them, and
 * finally requires `e2fsck -fn` to pass. The target is created 0600
 * exclusively (an existing file is ALREADY_EXISTS and left alone); on any
 * failure, or abort, the target and the temp files are removed.
 */
export async function prepareWorkDisk(options: PrepareWorkDiskOptions): Promise<void> {
  const { target, seedPath, sizeMib, files, signal } = options;
  const runner = options.runner ?? createHostRunner();
  if (!isAbsolute(target)) {
    throw new InvalidArgumentError(`work disk path ${target} must be absolute`, { reason: "INVALID_ARGUMENT" });
  }
  const sizeBytes = validSize(sizeMib);
  // Entries given as they are are checked before anything happens; promised ones when they arrive.
  const entries = files instanceof Promise ? files.then(validEntries) : Promise.resolve(validEntries(files));
  entries.catch(() => undefined); // awaited below, unless an earlier step failed
  if (signal?.aborted) throw cancelled(["prepareWorkDisk"], signal.reason);
  if (seedPath !== undefined) await requireFile(seedPath, "work seed", "WORK_SEED_MISSING");

  // Claim the name first: from here on the file is ours to remove.
  try {
    await writeFile(target, "", { flag: "wx", mode: 0o600 });
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === "EEXIST") {
      throw new FailedPreconditionError(`work disk ${target} already exists`, {
        reason: "WORK_DISK_EXISTS",
        cause,
      });
    }
    throw cause;
  }
  try {
    if (seedPath !== undefined) {
      try {
        await copySparse(seedPath, target, signal ? { signal } : {});
      } catch (cause) {
        if (signal?.aborted) throw cancelled(["cp", seedPath, target], signal.reason);
        throw new InternalError(`copying the work seed ${seedPath} to ${target} failed`, {
          reason: "HOST_COMMAND_FAILED",
          cause,
        });
      }
      await fsck(runner, target, signal);
      await grow(runner, target, sizeBytes, "WORK_DISK_TOO_SMALL", signal);
    } else {
      // A file system mkfs just made is clean and empty: no e2fsck before writing, no look at what it holds.
      await truncate(target, sizeBytes);
      await runner.run(
        ["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0,lazy_itable_init=1", "-L", "banger-work", target],
        { signal },
      );
    }
    const written = await writeEntries(runner, target, await entries, { fresh: seedPath === undefined }, signal);
    // After writing, `e2fsck -fy` ran; when it found nothing to fix, a second, read-only pass proves nothing more.
    if (written !== "clean") await runner.run(["e2fsck", "-fn", target], { signal });
  } catch (error) {
    await rm(target, { force: true }).catch((cleanup: unknown) => {
      if (error instanceof Error) error.message += ` (and removing ${target} failed: ${String(cleanup)})`;
    });
    throw error;
  }
}

/**
 * Writes `files` again onto an existing work disk (a stopped VM's, before it boots: the SSH key, git identity and
 * file_sync of the config as it is now): `e2fsck -fy`, one debugfs session that writes and reads back (a file
 * the guest replaced is overwritten; a path the guest turned into a directory, or a parent it turned into a
 * symlink or file, is WORK_DISK_PATH_CONFLICT and nothing is written), `e2fsck -fy` and, if that fixed
 * something, `e2fsck -fn`. Nothing else on the disk is touched.
 */
export async function refreshWorkDisk(options: {
  readonly path: string;
  readonly files: readonly WorkDiskEntry[] | Promise<readonly WorkDiskEntry[]>;
  readonly signal?: AbortSignal | undefined;
  readonly runner?: Runner | undefined;
}): Promise<void> {
  const { path, signal } = options;
  const runner = options.runner ?? createHostRunner();
  await requireFile(path, "work disk", "WORK_DISK_MISSING");
  const entries = validEntries(await options.files);
  await fsck(runner, path, signal);
  const written = await writeEntries(runner, path, entries, { fresh: false }, signal);
  if (written !== "clean") await runner.run(["e2fsck", "-fn", path], { signal });
}

/**
 * Grows an existing work disk to `sizeMib` (`vm set --disk`; the VM must be
 * stopped): `e2fsck -fy`, truncate, `resize2fs`, `e2fsck -fn`. The same size
 * is a no-op; a smaller one is WORK_DISK_SHRINK_REFUSED. If resize2fs fails
 * before changing the file system, the file is truncated back.
 */
export async function growWorkDisk(
  path: string,
  sizeMib: number,
  signal?: AbortSignal,
  runner: Runner = createHostRunner(),
): Promise<void> {
  const sizeBytes = validSize(sizeMib);
  await requireFile(path, "work disk", "WORK_DISK_MISSING");
  const { bytes } = await filesystemSize(runner, path, signal);
  if (sizeBytes < bytes) {
    throw new FailedPreconditionError(
      `work disk ${path} is ${bytes / MIB} MiB; it cannot shrink to ${sizeMib} MiB (disks only grow)`,
      { reason: "WORK_DISK_SHRINK_REFUSED" },
    );
  }
  if (sizeBytes === bytes) return;
  await fsck(runner, path, signal);
  await grow(runner, path, sizeBytes, "WORK_DISK_SHRINK_REFUSED", signal);
  await runner.run(["e2fsck", "-fn", path], { signal });
}

/** Grows the file system in `path` to `sizeBytes` (file first, then resize2fs); refuses to shrink. */
async function grow(
  runner: Runner,
  path: string,
  sizeBytes: number,
  shrinkReason: Reason,
  signal: AbortSignal | undefined,
): Promise<void> {
  const before = await filesystemSize(runner, path, signal);
  if (sizeBytes < before.bytes) {
    throw new FailedPreconditionError(
      `${path} holds a ${before.bytes / MIB} MiB file system; ${sizeBytes / MIB} MiB is too small (disks only grow)`,
      { reason: shrinkReason },
    );
  }
  if (sizeBytes === before.bytes) return;
  const fileBytes = (await stat(path)).size;
  if (fileBytes < sizeBytes) await truncate(path, sizeBytes);
  try {
    await runner.run(["resize2fs", path, `${sizeBytes / 1024}K`], { signal });
  } catch (error) {
    // Undo the truncate only if the file system still has its old size (measure before acting).
    const after = await filesystemSize(runner, path).catch(() => undefined);
    if (after?.blocks === before.blocks && fileBytes < sizeBytes) {
      await truncate(path, fileBytes).catch((cleanup: unknown) => {
        if (error instanceof Error) error.message += ` (and truncating ${path} back failed: ${String(cleanup)})`;
      });
    }
    throw error;
  }
}

/** The file system's size from `dumpe2fs -h`. */
async function filesystemSize(
  runner: Runner,
  path: string,
  signal?: AbortSignal,
): Promise<{ blocks: number; bytes: number }> {
  const { stdout } = await runner.run(["dumpe2fs", "-h", path], { signal });
  const blocks = /^Block count:\s+(\d+)$/m.exec(stdout)?.[1];
  const blockSize = /^Block size:\s+(\d+)$/m.exec(stdout)?.[1];
  if (blocks === undefined || blockSize === undefined) {
    throw new InternalError(`dumpe2fs -h ${path} printed no block count or size`, { reason: "HOST_COMMAND_FAILED" });
  }
  return { blocks: Number(blocks), bytes: Number(blocks) * Number(blockSize) };
}

function fsck(runner: Runner, path: string, signal: AbortSignal | undefined) {
  return runner.run(["e2fsck", "-fy", path], { signal, okCodes: E2FSCK_FIXED });
}

/** What debugfs `stat` says about an inode. */

/**
 * Writes the entries with one `debugfs -w` script after checking what the
 * disk holds, then `e2fsck -fy` and a read-back of every entry.
 */
async function writeEntries(
  runner: Runner,
  path: string,
  entries: readonly WorkDiskEntry[],
  disk: { readonly fresh: boolean },
  signal: AbortSignal | undefined,
): Promise<"clean" | "unchecked" | "fixed"> {
  if (entries.length === 0) return "unchecked";
  const wanted = new Set(entries.map((e) => e.path));
  const implicit = [...new Set(entries.flatMap((e) => diskParents(e.path)))].filter((p) => !wanted.has(p));
  // A fresh file system holds nothing but / and lost+found.
  const before = disk.fresh
    ? new Map<string, DebugfsStat | undefined>([...wanted, ...implicit].map((p) => [p, undefined]))
    : await statPaths(runner, path, [...wanted, ...implicit], signal);

  const problems: string[] = [];
  for (const entry of entries) {
    const type = before.get(entry.path)?.type;
    if (entry.kind === "file" && type === "directory") problems.push(`${entry.path} is a directory on the disk`);
    if (entry.kind === "directory" && type !== undefined && type !== "directory") {
      problems.push(`${entry.path} is a ${type} on the disk, not a directory`);
    }
  }
  for (const parent of implicit) {
    const type = before.get(parent)?.type;
    // A symlink parent is refused too: its target would be read in the guest's namespace, not the disk's.
    if (type !== undefined && type !== "directory")
      problems.push(`${parent} is a ${type} on the disk, not a directory`);
  }
  if (problems.length > 0) {
    throw new FailedPreconditionError(`cannot write the work disk ${path}: ${problems.join("; ")}`, {
      reason: "WORK_DISK_PATH_CONFLICT",
    });
  }

  return withPrivateTempDir(async (dir) => {
    const script: string[] = [];
    const exists = new Set([...before].filter(([, s]) => s !== undefined).map(([p]) => p));
    const ensureDir = (dirPath: string, mode: number, uid: number, gid: number, force: boolean) => {
      if (!exists.has(dirPath)) {
        script.push(`cd ${dirname(dirPath)}`, `mkdir ${basename(dirPath)}`);
        exists.add(dirPath);
        force = true;
      }
      if (force) script.push(...sif(dirPath, 0o040000 | mode, uid, gid));
    };
    // Directories first, outermost first: implicit parents 0755 0:0 (only when missing), listed ones as listed.
    const dirs = new Map<string, WorkDiskEntry | undefined>();
    for (const entry of entries) {
      for (const parent of diskParents(entry.path)) if (!dirs.has(parent)) dirs.set(parent, undefined);
      if (entry.kind === "directory") dirs.set(entry.path, entry);
    }
    for (const [dirPath, entry] of [...dirs].sort(([a], [b]) => depth(a) - depth(b))) {
      if (entry === undefined) ensureDir(dirPath, 0o755, 0, 0, false);
      else ensureDir(dirPath, entry.mode, entry.uid, entry.gid, true);
    }
    for (const [i, entry] of entries.entries()) {
      if (entry.kind !== "file") continue;
      const source = `${dir}/f${i}`;
      await writeFile(source, entry.content, { mode: 0o600, flag: "wx" });
      script.push(`cd ${dirname(entry.path)}`);
      // `rm /name` looks the parent "" up as the current directory, frees the inode and then fails
      // to find the entry there: always rm by the bare name from inside the parent.
      if (exists.has(entry.path)) script.push(`rm ${basename(entry.path)}`);
      script.push(`write ${source} ${basename(entry.path)}`);
      script.push(...sif(entry.path, 0o100000 | entry.mode, entry.uid, entry.gid));
      exists.add(entry.path);
    }
    script.push("cd /");
    // Read back at the end of the same session (what it wrote reaches the disk when it closes, which
    // it reports when it fails): type, mode, owner, and the exact bytes of every file.
    const files = entries.flatMap((e, i) => (e.kind === "file" ? [[e.path, `${dir}/v${i}`] as const] : []));
    const readBack = readBackLines([...wanted], files);
    const { stdout, stderr } = await runner.run(["debugfs", "-w", "-f", "-", path], {
      stdin: `${[...script, ...readBack].join("\n")}\n`,
      signal,
    });
    const checked = await fsck(runner, path, signal);
    // e2fsck changed nothing (exit 0): the session's read-back is what the disk holds. Else read it again.
    const after =
      checked.code === 0 ? statsOf(stdout, [...wanted]) : await statPaths(runner, path, [...wanted], signal, files);
    const closeFailure = debugfsCloseFailure(stderr);
    const wrong: string[] = closeFailure === undefined ? [] : [`closing the file system: ${closeFailure}`];
    for (const [i, entry] of entries.entries()) {
      const got = after.get(entry.path);
      const type = entry.kind === "file" ? "regular" : "directory";
      if (got === undefined) {
        wrong.push(`${entry.path}: missing`);
      } else if (got.type !== type || got.mode !== entry.mode || got.uid !== entry.uid || got.gid !== entry.gid) {
        wrong.push(`${entry.path}: ${got.type} mode 0${got.mode.toString(8)} owner ${got.uid}:${got.gid}`);
      } else if (entry.kind === "file") {
        const content = await readFile(`${dir}/v${i}`).catch(() => undefined);
        if (got.size !== entry.content.byteLength || content === undefined || !content.equals(entry.content)) {
          wrong.push(`${entry.path}: content differs`);
        }
      }
    }
    if (wrong.length > 0) {
      throw new FailedPreconditionError(
        `writing the work disk ${path} failed (${wrong.join("; ")})${debugfsErrors(stderr)}`,
        { reason: "WORK_DISK_WRITE_FAILED" },
      );
    }
    return checked.code === 0 ? "clean" : "fixed";
  });
}

function sif(path: string, mode: number, uid: number, gid: number): string[] {
  return [`sif ${path} mode 0${mode.toString(8)}`, `sif ${path} uid ${uid}`, `sif ${path} gid ${gid}`];
}

const depth = (path: string) => path.split("/").length;

/**
 * `stat`s paths with a read-only debugfs (and `dump`s `dumps` [disk path,
 * host file] pairs); a missing path maps to undefined.
 */
async function statPaths(
  runner: Runner,
  path: string,
  paths: readonly string[],
  signal: AbortSignal | undefined,
  dumps: readonly (readonly [string, string])[] = [],
): Promise<Map<string, DebugfsStat | undefined>> {
  const lines = readBackLines(paths, dumps);
  const { stdout } = await runner.run(["debugfs", "-f", "-", path], { stdin: `${lines.join("\n")}\n`, signal });
  return statsOf(stdout, paths);
}

function readBackLines(paths: readonly string[], dumps: readonly (readonly [string, string])[]): string[] {
  return [...paths.map((p) => `stat ${p}`), ...dumps.map(([p, host]) => `dump ${p} ${host}`)];
}

/** The `stat` sections of a debugfs session's output, by path. */
function statsOf(stdout: string, paths: readonly string[]): Map<string, DebugfsStat | undefined> {
  const sections = debugfsSections(stdout);
  return new Map(paths.map((p) => [p, parseDebugfsStat(sections.get(`stat ${p}`) ?? "")]));
}

function validSize(sizeMib: number): number {
  if (!Number.isInteger(sizeMib) || sizeMib < WORK_DISK_MIN_MIB || sizeMib > WORK_DISK_MAX_MIB) {
    throw new InvalidArgumentError(`work disk size must be ${WORK_DISK_MIN_MIB}–${WORK_DISK_MAX_MIB} MiB`, {
      reason: "INVALID_DISK_SIZE",
    });
  }
  return sizeMib * MIB;
}

function validEntries(entries: readonly WorkDiskEntry[]): readonly WorkDiskEntry[] {
  const seen = new Set<string>();
  for (const [i, entry] of entries.entries()) {
    const field = `files[${i}]`;
    const problem = diskPathProblem(entry.path);
    if (problem !== undefined) {
      throw new InvalidArgumentError(`${field}.path ${JSON.stringify(entry.path)} ${problem}`, {
        reason: "INVALID_DISK_PATH",
      });
    }
    if (seen.has(entry.path)) {
      throw new InvalidArgumentError(`${field}.path ${entry.path} is listed twice`, { reason: "INVALID_DISK_PATH" });
    }
    seen.add(entry.path);
    if (!Number.isInteger(entry.mode) || entry.mode < 0 || entry.mode > 0o7777) {
      throw new InvalidArgumentError(`${field}.mode must be 0–07777`, { reason: "INVALID_MODE" });
    }
    if (![entry.uid, entry.gid].every((id) => Number.isInteger(id) && id >= 0 && id <= MAX_ID)) {
      throw new InvalidArgumentError(`${field}.uid and .gid must be 0–${MAX_ID}`, { reason: "INVALID_OWNER" });
    }
  }
  for (const entry of entries) {
    const fileAbove = diskParents(entry.path).find((p) => entries.some((e) => e.path === p && e.kind === "file"));
    if (fileAbove !== undefined) {
      throw new InvalidArgumentError(`${entry.path} lies below the file ${fileAbove}`, { reason: "INVALID_DISK_PATH" });
    }
  }
  return entries;
}

async function requireFile(path: string, what: string, reason: Reason): Promise<void> {
  try {
    if ((await stat(path)).isFile()) return;
  } catch (cause) {
    throw new FailedPreconditionError(`${what} ${path} does not exist`, { reason, cause });
  }
  throw new FailedPreconditionError(`${what} ${path} is not a regular file`, { reason });
}

/** A 0700 directory under the system temp dir with a debugfs-safe path, removed afterwards whatever happens. */
async function withPrivateTempDir<T>(body: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "banger-work-"));
  if (!DEBUGFS_SAFE_HOST_PATH.test(dir)) {
    await rm(dir, { recursive: true, force: true });
    throw new InternalError(`temp directory ${dir} has characters debugfs cannot take (set TMPDIR)`, {
      reason: "UNSAFE_TEMP_DIR",
    });
  }
  let result: T;
  try {
    result = await body(dir);
  } catch (error) {
    await rm(dir, { recursive: true, force: true }).catch((cleanup: unknown) => {
      if (error instanceof Error) error.message += ` (and removing ${dir} failed: ${String(cleanup)})`;
    });
    throw error;
  }
  await rm(dir, { recursive: true, force: true });
  return result;
}

function cancelled(argv: readonly string[], cause: unknown): CancelledError {
  return new CancelledError(`${argv[0] ?? "command"} was cancelled`, { cause });
}
