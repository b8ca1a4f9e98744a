/**
 * Workspaces: a host git repository copied into a guest over SSH as a tar
 * stream, and the guest's changes brought back as a patch (or a tar).
 *
 * Where the work happens: the orchestrator (running as the owner) reads the
 * repository at the path it is given, packs the files and streams the tar
 * into the guest's stdin; the guest only unpacks it. Each prepare records a
 * baseline on the host, under `<state>/workspaces/<vm id>/`: a git directory
 * holding one commit of exactly what was copied. An export streams the
 * guest's tree back (without `.git`) and diffs it against that baseline on
 * the host. So the guest needs only `sh`, `tar`, `mkdir`, `mv` and `rm`
 * (busybox's are enough) and never `git`: in COPY mode the guest's `.git` is
 * the baseline repository itself, in GIT mode it is the host repository's
 * `.git` as it is (git is needed in the guest only to use it there).
 *
 * Locks: a workspace lock per VM (prepares and exports of one VM run one at a
 * time) that is not the lifecycle lock, so StopVm and DeleteVm never wait for
 * a slow transfer. A transfer watches its VM instead: when the VM stops, is
 * deleted or restarted under it, it ends with VM_STOPPED. The guest's
 * previous workspace stays as it was until a transfer is complete: the new
 * tree is unpacked beside it (`.<name>.banger-new`) and swapped in by a
 * second command only once the host has seen the unpacking succeed.
 */
import { createHash, randomBytes } from "node:crypto";
import { lstat, mkdir, readFile, readdir, readlink, realpath, rename, rm, statfs, writeFile } from "node:fs/promises";
import { basename, isAbsolute, join, posix, relative, sep } from "node:path";
import {
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnavailableError,
  type BangerError,
  type Logger,
} from "@banger/common";
import type { OperationRecord } from "../store/index.js";
import { shellQuote, type GuestTarget } from "./guest-exec.js";
import { openGuestStream, type GuestStream, type GuestStreamExit } from "./guest-stream.js";
import type { OperationContext, Operations } from "./operations.js";
import { validVmName } from "./vms.js";
import { diffAgainst, findRepository, listRepositoryFiles, recordBaseline, type Repository } from "./workspace-git.js";
import { DEFAULT_MAX_ENTRIES, extractTree, packTree, type ExtractLimits, type TreeEntry } from "./workspace-tar.js";

export type WorkspaceMode = "copy" | "git";
export type ExportFormat = "patch" | "tar";

export interface PrepareRequest {
  readonly vm: string;
  /** Absolute host path inside the owner's home: the repository's top level or any directory in it. */
  readonly hostPath: string;
  /** Absolute, normalised guest path; "" = /root/<repository directory name>. */
  readonly guestPath: string;
  readonly mode: WorkspaceMode;
}

export interface ExportRequest {
  readonly vm: string;
  /** "" = the workspace last prepared on this VM. */
  readonly guestPath: string;
  readonly format: ExportFormat;
}

/** What workspaces need of the VM lifecycle (VmService has it). */
export interface WorkspaceVms {
  /** The VM now. Errors: VM_NOT_FOUND. */
  get(name: string): Promise<{ readonly id: string; readonly state: string; readonly pid: number }>;
  /** Where to reach a running guest. Errors: VM_NOT_FOUND, VM_NOT_RUNNING. */
  guestTarget(name: string): Promise<GuestTarget>;
  list(): Promise<readonly { readonly id: string }[]>;
}

export interface Workspaces {
  /**
   * Checks the request (INVALID_PATH, INVALID_GUEST_PATH, NOT_A_GIT_REPOSITORY,
   * PATH_OUTSIDE_HOME, SUBMODULES_UNSUPPORTED, VM_NOT_FOUND, VM_NOT_RUNNING),
   * then starts the prepare operation (stages scan, baseline, upload) and
   * returns it. It fails with VM_STOPPED when the VM stops under it.
   */
  prepare(req: PrepareRequest): Promise<OperationRecord>;
  /**
   * Checks the request (VM_NOT_FOUND, NO_WORKSPACE, VM_NOT_RUNNING) and returns
   * the export's bytes: a patch against what was prepared (empty: no
   * changes) or a tar of the workspace without `.git`.
   */
  export(req: ExportRequest, signal: AbortSignal): Promise<AsyncIterable<Buffer>>;
  /** At start-up: removes what earlier runs left (baselines of deleted VMs, unfinished staging). */
  recover(): Promise<void>;
}

/** What the host keeps of a prepared workspace (`workspace.json` beside its baseline `repo/`). */
interface WorkspaceRecord {
  readonly guestPath: string;
  readonly mode: WorkspaceMode;
  readonly hostPath: string;
  readonly commit: string;
  readonly preparedAt: string;
  readonly files: number;
  readonly bytes: number;
}

/** How often a transfer checks that its VM still runs. */
const VM_POLL_MS = 250;
const GUEST_PATH_MAX = 1024;
/** Two 512-byte zero blocks: a tar with nothing in it. */
const EMPTY_TAR = Buffer.alloc(1024);

/**
 * Unpacks the tar on stdin into $1, a new directory beside the target; a
 * failure or a hang-up mid-way removes it. The target is not touched.
 */
const UNPACK_SCRIPT = `set -e
new=$1
if ! command -v tar >/dev/null 2>&1; then echo "tar: not found" >&2; exit 127; fi
rm -rf -- "$new"
trap 'rm -rf -- "$new"' EXIT
trap 'exit 129' HUP INT TERM PIPE
mkdir -p -- "$new"
tar -xf - -C "$new"
trap - EXIT
`;

/**
 * Puts the unpacked tree $2 in the place of the target $1 (whatever was
 * there goes, by way of $3): run only once the host has the whole transfer
 * confirmed, so a prepare that fails or is cancelled leaves the target as it was.
 */
const SWAP_SCRIPT = `set -e
dest=$1 new=$2 old=$3
if [ ! -d "$new" ]; then echo "the unpacked workspace $new is gone" >&2; exit 4; fi
rm -rf -- "$old"
if [ -e "$dest" ] || [ -L "$dest" ]; then mv -- "$dest" "$old"; fi
mv -- "$new" "$dest"
rm -rf -- "$old"
`;

/** A tar of $1's contents without its top-level .git on stdout (busybox tar has no --exclude); nothing when empty. */
const EXPORT_SCRIPT = `cd "$1" 2>/dev/null || { echo "no directory $1" >&2; exit 3; }
if ! command -v tar >/dev/null 2>&1; then echo "tar: not found" >&2; exit 127; fi
set --
for f in .[!.]* ..?* *; do
  if [ -e "$f" ] || [ -L "$f" ]; then
    if [ "$f" != .git ]; then set -- "$@" "./$f"; fi
  fi
done
if [ $# -eq 0 ]; then exit 0; fi
exec tar -cf - "$@"
`;

/** The guest command line running `script` with `args` as $1…, whatever the login shell is. */
function scriptLine(script: string, args: readonly string[]): string {
  return ["sh", "-c", script, "banger-workspace", ...args].map(shellQuote).join(" ");
}

/** Guest paths a workspace may not replace: the root, top-level directories, /root itself and banger's SSH access. */
export function validGuestPath(path: string): string {
  const refuse = (why: string) =>
    new InvalidArgumentError(`guest path ${JSON.stringify(path)} ${why}`, { reason: "INVALID_GUEST_PATH" });
  if (!path.startsWith("/")) throw refuse("is not absolute");
  if (path.length > GUEST_PATH_MAX) throw refuse(`is longer than ${GUEST_PATH_MAX} bytes`);
  if (/[\x00-\x1f\x7f]/.test(path)) throw refuse("holds control characters");
  if (posix.normalize(path) !== path || path.endsWith("/"))
    throw refuse("is not normalised (no //, ., .. or trailing /)");
  if (path.split("/").length < 3)
    throw refuse("is a top-level directory; give a directory inside one, e.g. /root/repo");
  if (path === "/root/.ssh" || path.startsWith("/root/.ssh/")) throw refuse("would replace banger's SSH access");
  return path;
}

/** Where a repository goes when no guest path is given: /root/<its directory name>. */
export function defaultGuestPath(top: string): string {
  return validGuestPath(`/root/${basename(top)}`);
}

/** Whether `path` is `dir` or inside it (both absolute, symlinks resolved). */
function isInside(path: string, dir: string): boolean {
  const rel = relative(dir, path);
  return rel === "" || (!rel.startsWith(`..${sep}`) && rel !== ".." && !isAbsolute(rel));
}

/** A lock per key whose holders run one at a time, in arrival order; waiting can be abandoned. */
function createKeyedLock() {
  const tails = new Map<string, Promise<void>>();
  return {
    busy: (key: string) => tails.has(key),
    async acquire(key: string, signal: AbortSignal): Promise<() => void> {
      const previous = tails.get(key) ?? Promise.resolve();
      let open!: () => void;
      const mine = new Promise<void>((resolve) => (open = resolve));
      const tail = previous.then(() => mine);
      tails.set(key, tail);
      const release = () => {
        open();
        if (tails.get(key) === tail) tails.delete(key);
      };
      try {
        await new Promise<void>((resolve, reject) => {
          const onAbort = () => reject(signal.reason as Error);
          if (signal.aborted) return onAbort();
          signal.addEventListener("abort", onAbort, { once: true });
          void previous.then(() => {
            signal.removeEventListener("abort", onAbort);
            resolve();
          });
        });
      } catch (error) {
        // Our turn passes to the next one as soon as it comes.
        void previous.then(release);
        throw error;
      }
      return release;
    },
  };
}

export function createWorkspaces(deps: {
  readonly vms: WorkspaceVms;
  readonly operations: Operations;
  readonly stateDir: string;
  /** The owner's home: repositories must be inside it. */
  readonly home: string;
  readonly logger: Logger;
  readonly now?: () => Date;
}): Workspaces {
  const { vms, operations, logger } = deps;
  const now = deps.now ?? (() => new Date());
  const root = join(deps.stateDir, "workspaces");
  const vmRoot = (vmId: string) => join(root, vmId);
  const recordDir = (vmId: string, guestPath: string) =>
    join(vmRoot(vmId), createHash("sha256").update(guestPath).digest("hex").slice(0, 16));
  const lock = createKeyedLock();

  /** Aborts when the VM stops, is deleted or restarted; turns a failure it caused into VM_STOPPED. */
  function guardVm(name: string, vm: { id: string; pid: number }, parent: AbortSignal, doing: string) {
    const controller = new AbortController();
    const stopped = () =>
      new FailedPreconditionError(`VM ${name} was stopped while ${doing}`, { reason: "VM_STOPPED" });
    const stillRuns = async () => {
      try {
        const current = await vms.get(name);
        return (
          current.id === vm.id &&
          current.pid === vm.pid &&
          (current.state === "running" || current.state === "starting")
        );
      } catch (error) {
        return !(error instanceof NotFoundError);
      }
    };
    const timer = setInterval(() => {
      void stillRuns().then((runs) => {
        if (!runs && !controller.signal.aborted) controller.abort(stopped());
      });
    }, VM_POLL_MS);
    return {
      signal: AbortSignal.any([parent, controller.signal]),
      async translate(error: unknown): Promise<unknown> {
        if (controller.signal.aborted) return controller.signal.reason;
        if (parent.aborted) return error;
        return (await stillRuns()) ? error : stopped();
      },
      stop: () => clearInterval(timer),
    };
  }

  /** The host path as a directory inside the owner's home, symlinks resolved. */
  async function hostDirectory(path: string): Promise<string> {
    const invalid = (why: string) =>
      new InvalidArgumentError(`host path ${JSON.stringify(path)} ${why}`, { reason: "INVALID_PATH" });
    if (!isAbsolute(path)) throw invalid("is not absolute");
    const real = await realpath(path).catch(() => {
      throw invalid("does not exist");
    });
    if (!(await lstat(real)).isDirectory()) throw invalid("is not a directory");
    await insideHome(real, real);
    return real;
  }

  async function insideHome(path: string, what: string): Promise<void> {
    const home = await realpath(deps.home).catch(() => deps.home);
    if (!isInside(path, home)) {
      throw new PermissionDeniedError(
        `${what} is outside the owner's home (${home}); workspaces copy only from there`,
        {
          reason: "PATH_OUTSIDE_HOME",
        },
      );
    }
  }

  /** GIT mode copies `.git` as a directory; a linked worktree's or an alternates user's would be incomplete. */
  async function gitDirToCopy(repo: Repository): Promise<string> {
    const unsupported = (why: string) =>
      new FailedPreconditionError(`${repo.top}: ${why}; use mode COPY (--mode copy)`, {
        reason: "UNSUPPORTED_GIT_LAYOUT",
      });
    const dotGit = join(repo.top, ".git");
    if (repo.gitDir !== dotGit || !(await lstat(dotGit)).isDirectory()) {
      throw unsupported(
        "its git directory is not a .git directory inside it (a linked worktree or a separate git dir)",
      );
    }
    if (await lstat(join(dotGit, "objects", "info", "alternates")).catch(() => undefined)) {
      throw unsupported("it borrows objects from another repository (objects/info/alternates)");
    }
    return dotGit;
  }

  /** `paths` of the repository as tar entries, with every directory they need; deleted files are left out. */
  async function scanFiles(top: string, paths: readonly string[], signal: AbortSignal): Promise<TreeEntry[]> {
    const entries: TreeEntry[] = [];
    const dirs = new Set<string>();
    for (const path of paths) {
      signal.throwIfAborted();
      const source = join(top, path);
      const stats = await lstat(source).catch(() => undefined);
      if (!stats || !(stats.isFile() || stats.isSymbolicLink())) continue;
      const parts = path.split("/");
      for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/"));
      entries.push({
        path,
        kind: stats.isFile() ? "file" : "symlink",
        source,
        linkTarget: stats.isSymbolicLink() ? await readlink(source) : "",
        mode: stats.mode & 0o777,
        size: stats.isFile() ? stats.size : 0,
        mtimeMs: stats.mtimeMs,
      });
    }
    for (const dir of dirs) {
      const stats = await lstat(join(top, dir));
      entries.push(directoryEntry(dir, join(top, dir), stats.mode, stats.mtimeMs));
    }
    return entries;
  }

  /** Everything under `dir` (a git directory) as entries under `prefix`, lock files and sockets left out. */
  async function walkGitDir(dir: string, prefix: string): Promise<TreeEntry[]> {
    const stats = await lstat(dir);
    const entries: TreeEntry[] = [directoryEntry(prefix, dir, stats.mode, stats.mtimeMs)];
    for (const child of await readdir(dir, { withFileTypes: true })) {
      const source = join(dir, child.name);
      const path = `${prefix}/${child.name}`;
      if (child.isDirectory()) entries.push(...(await walkGitDir(source, path)));
      else if (child.isFile() || child.isSymbolicLink()) {
        if (child.name.endsWith(".lock")) continue; // a git command running now; the guest must not inherit its lock
        const s = await lstat(source);
        entries.push({
          path,
          kind: child.isFile() ? "file" : "symlink",
          source,
          linkTarget: child.isSymbolicLink() ? await readlink(source) : "",
          mode: s.mode & 0o777,
          size: child.isFile() ? s.size : 0,
          mtimeMs: s.mtimeMs,
        });
      }
    }
    return entries;
  }

  async function readRecord(vmId: string, guestPath: string, vmName: string): Promise<WorkspaceRecord> {
    let path = guestPath;
    if (path === "") {
      const last = await readJson<{ guestPath: string }>(join(vmRoot(vmId), "last.json"));
      if (!last) {
        throw new FailedPreconditionError(`no workspace was prepared on VM ${vmName}`, { reason: "NO_WORKSPACE" });
      }
      path = last.guestPath;
    }
    const record = await readJson<WorkspaceRecord>(join(recordDir(vmId, path), "workspace.json"));
    if (!record || record.guestPath !== path) {
      throw new FailedPreconditionError(`no workspace was prepared at ${path} on VM ${vmName}`, {
        reason: "NO_WORKSPACE",
      });
    }
    return record;
  }

  /** Directories of VMs that no longer exist, and staging an interrupted transfer left. */
  async function sweep(all: boolean): Promise<void> {
    const ids = new Set((await vms.list()).map((vm) => vm.id));
    for (const entry of await readdir(root).catch(() => [])) {
      if (!ids.has(entry)) {
        await rm(join(root, entry), { recursive: true, force: true });
        logger.info({ id: entry }, "removed the workspaces of a VM that no longer exists");
      } else if (all) {
        for (const leftover of await readdir(join(root, entry)).catch(() => [])) {
          if (leftover.startsWith(".")) await rm(join(root, entry, leftover), { recursive: true, force: true });
        }
      }
    }
  }

  async function runPrepare(
    op: OperationContext,
    name: string,
    vm: { id: string; pid: number },
    repo: Repository,
    paths: readonly string[],
    guestPath: string,
    mode: WorkspaceMode,
  ): Promise<null> {
    const waits = lock.busy(name);
    if (waits) await op.track("wait-workspace", "running", `another workspace transfer on ${name} runs`);
    const release = await lock.acquire(name, op.signal);
    if (waits) await op.track("wait-workspace", "done");
    const guard = guardVm(name, vm, op.signal, `its workspace ${guestPath} was being prepared`);
    const { signal } = guard;
    const staging = join(vmRoot(vm.id), `.staging-${op.id}`);
    const guarded =
      <T>(work: () => Promise<T>) =>
      async () => {
        try {
          return await work();
        } catch (error) {
          throw await guard.translate(error);
        }
      };
    try {
      await sweep(false);
      const entries = await op.stage(
        "scan",
        guarded(async () => {
          const found = await scanFiles(repo.top, paths, signal);
          if (mode === "git") found.push(...(await walkGitDir(await gitDirToCopy(repo), ".git")));
          return found;
        }),
      );
      const commit = await op.stage(
        "baseline",
        guarded(async () => {
          await mkdir(staging, { recursive: true, mode: 0o700 });
          const copied = entries
            .filter((e) => e.kind !== "directory" && !e.path.startsWith(".git/"))
            .map((e) => e.path);
          const made = await recordBaseline({
            gitDir: join(staging, "repo"),
            top: repo.top,
            sourceGitDir: repo.gitDir,
            paths: copied,
            branch: repo.branch || "main",
            message: `banger workspace: ${repo.top}${repo.head ? ` at ${repo.head.slice(0, 12)}` : ""} with its uncommitted and untracked files\n`,
            signal,
          });
          // COPY: the guest's .git is the baseline itself (one commit of what it gets).
          if (mode === "copy") entries.push(...(await walkGitDir(join(staging, "repo"), ".git")));
          return made;
        }),
      );
      const isFile = (e: TreeEntry) => e.kind !== "directory";
      const files = entries.filter((e) => isFile(e) && !e.path.startsWith(".git/")).length;
      const sending = entries.filter(isFile).length;
      const totalBytes = entries.reduce((sum, e) => sum + e.size, 0);
      await op.stage(
        "upload",
        guarded(async () => {
          await op.track("upload", "running", `${files} files + .git, ${mib(totalBytes)} into ${guestPath}`);
          const target = await vms.guestTarget(name);
          const beside = `${posix.dirname(guestPath)}/.${posix.basename(guestPath)}`;
          const [fresh, old] = [`${beside}.banger-new`, `${beside}.banger-old`];
          const session = await openGuestStream(target, scriptLine(UNPACK_SCRIPT, [fresh]), signal);
          session.channel.resume(); // it prints nothing, but its channel closes only once stdout is read to its end
          let sentFiles = 0;
          let sentBytes = 0;
          const item = basename(repo.top);
          const report = () =>
            op.progress("upload", {
              doneBytes: sentBytes,
              totalBytes,
              items: [{ id: item, doneBytes: sentBytes, totalBytes, state: `${sentFiles}/${sending} files` }],
            });
          report();
          const exit = await send(
            session,
            packTree(
              entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)),
              (bytes, fileDone) => {
                sentBytes += bytes;
                if (fileDone) sentFiles++;
                report();
              },
              signal,
            ),
          );
          if (exit.code !== 0) throw guestFailure(exit, "unpacking the workspace");
          // All of it is there: only now does it replace what the guest had.
          const swap = await openGuestStream(target, scriptLine(SWAP_SCRIPT, [guestPath, fresh, old]), signal);
          swap.channel.resume();
          swap.channel.end();
          const swapped = await swap.done;
          if (swapped.code !== 0) throw guestFailure(swapped, "putting the workspace in place");
        }),
      );
      // The guest has the new tree: its baseline replaces the old one.
      const record: WorkspaceRecord = {
        guestPath,
        mode,
        hostPath: repo.top,
        commit,
        preparedAt: now().toISOString(),
        files,
        bytes: totalBytes,
      };
      await writeFile(join(staging, "workspace.json"), JSON.stringify(record, null, 2) + "\n", { mode: 0o600 });
      const dir = recordDir(vm.id, guestPath);
      const old = join(vmRoot(vm.id), `.old-${op.id}`);
      await rename(dir, old).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== "ENOENT") throw error;
      });
      await rename(staging, dir);
      await rm(old, { recursive: true, force: true });
      await writeJsonAtomically(join(vmRoot(vm.id), "last.json"), { guestPath });
      logger.info({ vm: name, guest_path: guestPath, mode, files, bytes: totalBytes }, "workspace prepared");
      return null;
    } finally {
      guard.stop();
      release();
      await rm(staging, { recursive: true, force: true });
    }
  }

  async function* exported(
    name: string,
    vm: { id: string; pid: number },
    target: GuestTarget,
    record: WorkspaceRecord,
    format: ExportFormat,
    callSignal: AbortSignal,
  ): AsyncGenerator<Buffer> {
    const release = await lock.acquire(name, callSignal);
    const guard = guardVm(name, vm, callSignal, `its workspace ${record.guestPath} was being exported`);
    const scratch = join(vmRoot(vm.id), `.export-${randomBytes(6).toString("hex")}`);
    let session: GuestStream | undefined;
    try {
      session = await openGuestStream(target, scriptLine(EXPORT_SCRIPT, [record.guestPath]), guard.signal);
      const checkExit = (exit: GuestStreamExit) => {
        if (exit.code === 3) {
          throw new FailedPreconditionError(`the workspace ${record.guestPath} is no longer in the guest`, {
            reason: "NO_WORKSPACE",
          });
        }
        if (exit.code !== 0) throw guestFailure(exit, "packing the workspace");
      };
      if (format === "tar") {
        let sent = false;
        for await (const chunk of session.channel as AsyncIterable<Buffer>) {
          sent = true;
          yield chunk;
        }
        checkExit(await session.done);
        if (!sent) yield EMPTY_TAR;
        return;
      }
      const tree = join(scratch, "tree");
      await mkdir(tree, { recursive: true, mode: 0o700 });
      // An empty workspace sends nothing, which reads as an empty tar.
      const limits = await exportLimits(tree);
      const extracting = extractTree(session.channel, tree, (path) => path === ".git", guard.signal, limits);
      const [extracted, exit] = await Promise.allSettled([extracting, session.done]);
      // The guest's own account of a failure comes first: a cut-off tar is its consequence.
      if (exit.status === "rejected") throw exit.reason;
      checkExit(exit.value);
      if (extracted.status === "rejected") throw extracted.reason;
      yield* diffAgainst({
        gitDir: join(recordDir(vm.id, record.guestPath), "repo"),
        commit: record.commit,
        workTree: tree,
        scratch,
        signal: guard.signal,
      });
    } catch (error) {
      throw await guard.translate(error);
    } finally {
      session?.close();
      guard.stop();
      release();
      await rm(scratch, { recursive: true, force: true });
    }
  }

  return {
    async prepare(req) {
      const name = validVmName(req.vm);
      if (req.guestPath !== "") validGuestPath(req.guestPath);
      const hostPath = await hostDirectory(req.hostPath);
      const signal = AbortSignal.timeout(120_000);
      const repo = await findRepository(hostPath, signal);
      await insideHome(repo.top, `the repository ${repo.top}`);
      if (req.mode === "git") await gitDirToCopy(repo);
      const guestPath = req.guestPath || defaultGuestPath(repo.top);
      const vm = await vms.get(name);
      await vms.guestTarget(name); // VM_NOT_RUNNING before anything starts
      const paths = await listRepositoryFiles(repo.top, signal);
      return operations.start("prepare-workspace", name, (op) =>
        runPrepare(op, name, vm, repo, paths, guestPath, req.mode),
      );
    },

    async export(req, signal) {
      const name = validVmName(req.vm);
      if (req.guestPath !== "") validGuestPath(req.guestPath);
      const vm = await vms.get(name);
      const record = await readRecord(vm.id, req.guestPath, name);
      const target = await vms.guestTarget(name);
      return exported(name, vm, target, record, req.format, signal);
    },

    async recover() {
      await sweep(true);
    },
  };
}

function directoryEntry(path: string, source: string, mode: number, mtimeMs: number): TreeEntry {
  return { path, kind: "directory", source, linkTarget: "", mode: mode & 0o777, size: 0, mtimeMs };
}

/** What a guest's export may leave on the host's disk: never less than this free, nor than 5% of it. */
const EXPORT_FREE_RESERVE_BYTES = 1024 ** 3;

/**
 * A patch export unpacks the guest's tree on the host first: it may use the
 * free space of the file system holding `dir`, less a reserve, so that a guest
 * sending an endless tar stops at RESOURCE_EXHAUSTED instead of filling the disk.
 */
async function exportLimits(dir: string): Promise<ExtractLimits> {
  const fs = await statfs(dir);
  const reserve = Math.max(EXPORT_FREE_RESERVE_BYTES, fs.blocks * fs.bsize * 0.05);
  return { maxBytes: Math.max(0, fs.bavail * fs.bsize - reserve), maxEntries: DEFAULT_MAX_ENTRIES };
}

/** Writes to the SSH channel at least this much at a time: each write is a packet, and small ones crawl. */
const WRITE_BATCH_BYTES = 64 * 1024;

/** `chunks` regrouped into buffers of at least `size` bytes (the last one may be smaller). */
async function* batched(chunks: AsyncIterable<Buffer>, size: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of chunks) {
    parts.push(chunk);
    bytes += chunk.length;
    if (bytes >= size) {
      yield Buffer.concat(parts);
      parts = [];
      bytes = 0;
    }
  }
  if (bytes > 0) yield Buffer.concat(parts);
}

/**
 * Streams `chunks` into the guest command's stdin at the pace SSH takes them,
 * closes it, and returns how the command ended (early if it exits before
 * reading everything).
 */
async function send(session: GuestStream, chunks: AsyncIterable<Buffer>): Promise<GuestStreamExit> {
  let ended = false;
  const over = session.done.then(
    () => (ended = true),
    () => (ended = true),
  );
  for await (const chunk of batched(chunks, WRITE_BATCH_BYTES)) {
    if (ended) break;
    if (!session.channel.write(chunk)) {
      await Promise.race([new Promise((resolve) => session.channel.once("drain", resolve)), over]);
    }
  }
  if (!ended) session.channel.end();
  return session.done;
}

/** A guest command that did not end with 0, as a typed error. */
function guestFailure(exit: GuestStreamExit, doing: string): BangerError {
  const tail = exit.stderr.trim().split("\n").slice(-3).join("; ");
  if (exit.code === -1) {
    return new UnavailableError(`the guest hung up while ${doing}${tail ? `: ${tail}` : ""}`, {
      reason: "GUEST_UNREACHABLE",
    });
  }
  if (exit.code === 127) {
    return new FailedPreconditionError(
      `the guest lacks a tool workspaces need (sh, tar, mkdir, mv and rm; busybox's are enough): ${tail}`,
      { reason: "GUEST_TOOL_MISSING" },
    );
  }
  if (/no space left/i.test(exit.stderr)) {
    return new ResourceExhaustedError(`the guest's disk is full (${doing}): ${tail}`, { reason: "GUEST_DISK_FULL" });
  }
  return new InternalError(`${doing} in the guest failed (exit ${exit.code}): ${tail}`, {
    reason: "GUEST_COMMAND_FAILED",
  });
}

function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}

async function readJson<T>(path: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(path, "utf8")) as T;
  } catch {
    return undefined;
  }
}

async function writeJsonAtomically(path: string, value: unknown): Promise<void> {
  const temp = `${path}.${randomBytes(4).toString("hex")}.tmp`;
  await writeFile(temp, JSON.stringify(value, null, 2) + "\n", { mode: 0o600 });
  await rename(temp, path);
}
