/**
 * The prepare operation: scan (the repository's files, and in GIT mode its
 * `.git`) → baseline (one commit of exactly that, kept on the host) → upload
 * (a tar unpacked beside the guest path, swapped in only once complete); then
 * the new baseline replaces the old one.
 */
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { basename, join, posix } from "node:path";
import type { OperationContext } from "../operations.js";
import { openGuestStream } from "../guest-stream.js";
import { recordBaseline, type Repository } from "../workspace-git.js";
import { packTree, type TreeEntry } from "../workspace-tar.js";
import {
  guardVm,
  sweep,
  writeJsonAtomically,
  type WorkspaceContext,
  type WorkspaceMode,
  type WorkspaceRecord,
} from "./context.js";
import { SWAP_SCRIPT, UNPACK_SCRIPT, guestFailure, mib, scriptLine, send } from "./guest-io.js";
import { gitDirToCopy, scanFiles, walkGitDir } from "./host-tree.js";

export async function runPrepare(
  ctx: WorkspaceContext,
  op: OperationContext,
  name: string,
  vm: { id: string; pid: number },
  repo: Repository,
  paths: readonly string[],
  guestPath: string,
  mode: WorkspaceMode,
): Promise<null> {
  const { lock } = ctx;
  const waits = lock.busy(name);
  if (waits) await op.track("wait-workspace", "running", `another workspace transfer on ${name} runs`);
  const release = await lock.acquire(name, op.signal);
  if (waits) await op.track("wait-workspace", "done");
  const guard = guardVm(ctx, name, vm, op.signal, `its workspace ${guestPath} was being prepared`);
  const { signal } = guard;
  const staging = join(ctx.vmRoot(vm.id), `.staging-${op.id}`);
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
    await sweep(ctx, false);
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
        const copied = entries.filter((e) => e.kind !== "directory" && !e.path.startsWith(".git/")).map((e) => e.path);
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
    const files = entries.filter((e) => e.kind !== "directory" && !e.path.startsWith(".git/")).length;
    const totalBytes = entries.reduce((sum, e) => sum + e.size, 0);
    await op.stage(
      "upload",
      guarded(() => upload(ctx, op, { name, repo, entries, guestPath, files, totalBytes, signal })),
    );
    // The guest has the new tree: its baseline replaces the old one.
    const record: WorkspaceRecord = {
      guestPath,
      mode,
      hostPath: repo.top,
      commit,
      preparedAt: ctx.now().toISOString(),
      files,
      bytes: totalBytes,
    };
    await writeFile(join(staging, "workspace.json"), JSON.stringify(record, null, 2) + "\n", { mode: 0o600 });
    const dir = ctx.recordDir(vm.id, guestPath);
    const old = join(ctx.vmRoot(vm.id), `.old-${op.id}`);
    await rename(dir, old).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "ENOENT") throw error;
    });
    await rename(staging, dir);
    await rm(old, { recursive: true, force: true });
    await writeJsonAtomically(join(ctx.vmRoot(vm.id), "last.json"), { guestPath });
    ctx.logger.info({ vm: name, guest_path: guestPath, mode, files, bytes: totalBytes }, "workspace prepared");
    return null;
  } finally {
    guard.stop();
    release();
    await rm(staging, { recursive: true, force: true });
  }
}

/** Stage upload: the tree as a tar unpacked beside the guest path, then swapped into its place. */
async function upload(
  ctx: WorkspaceContext,
  op: OperationContext,
  transfer: {
    readonly name: string;
    readonly repo: Repository;
    readonly entries: TreeEntry[];
    readonly guestPath: string;
    /** Files outside .git. */
    readonly files: number;
    readonly totalBytes: number;
    readonly signal: AbortSignal;
  },
): Promise<void> {
  const { name, entries, guestPath, files, totalBytes, signal } = transfer;
  const sending = entries.filter((e) => e.kind !== "directory").length;
  await op.track("upload", "running", `${files} files + .git, ${mib(totalBytes)} into ${guestPath}`);
  const target = await ctx.vms.guestTarget(name);
  const beside = `${posix.dirname(guestPath)}/.${posix.basename(guestPath)}`;
  const [fresh, old] = [`${beside}.banger-new`, `${beside}.banger-old`];
  const session = await openGuestStream(target, scriptLine(UNPACK_SCRIPT, [fresh]), signal);
  session.channel.resume(); // it prints nothing, but its channel closes only once stdout is read to its end
  let sentFiles = 0;
  let sentBytes = 0;
  const item = basename(transfer.repo.top);
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
}
