/**
 * An export: the guest's workspace streamed back as a tar (without `.git`),
 * or unpacked on the host within the disk's free space and diffed against
 * the baseline recorded at prepare (a patch).
 */
import { randomBytes } from "node:crypto";
import { mkdir, rm, statfs } from "node:fs/promises";
import { join } from "node:path";
import { FailedPreconditionError } from "@banger/common";
import type { GuestTarget } from "../guest-exec.js";
import { openGuestStream, type GuestStream, type GuestStreamExit } from "../guest-stream.js";
import { diffAgainst } from "../workspace-git.js";
import { DEFAULT_MAX_ENTRIES, extractTree, type ExtractLimits } from "../workspace-tar.js";
import { guardVm, type ExportFormat, type WorkspaceContext, type WorkspaceRecord } from "./context.js";
import { EMPTY_TAR, EXPORT_SCRIPT, guestFailure, scriptLine } from "./guest-io.js";

export async function* exported(
  ctx: WorkspaceContext,
  name: string,
  vm: { id: string; pid: number },
  target: GuestTarget,
  record: WorkspaceRecord,
  format: ExportFormat,
  callSignal: AbortSignal,
): AsyncGenerator<Buffer> {
  const release = await ctx.lock.acquire(name, callSignal);
  const guard = guardVm(ctx, name, vm, callSignal, `its workspace ${record.guestPath} was being exported`);
  const scratch = join(ctx.vmRoot(vm.id), `.export-${randomBytes(6).toString("hex")}`);
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
      gitDir: join(ctx.recordDir(vm.id, record.guestPath), "repo"),
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
