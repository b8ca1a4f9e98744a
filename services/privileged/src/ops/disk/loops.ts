/**
 * Loop devices over files inside the state directory: the file is opened by `openConfined` and the
 * open file (not the path) is handed to losetup; detaching re-reads the kernel's record of the
 * backing file first, so the helper never detaches a loop that is not banger's.
 */
import { readFile, readdir } from "node:fs/promises";
import { FailedPreconditionError, InternalError, PermissionDeniedError } from "@banger/common/errors";
import { LOOP_DEVICE, loopName } from "../../validate/disk.js";
import { confinedPath, isInsideStateDir, openConfined } from "../../validate/paths.js";
import { isErrno, opts, type DiskContext } from "./context.js";
import type { LoopInfo } from "./types.js";

const LOOP_NAME = /^loop[0-9]{1,4}$/;

/** The kernel's record of a loop device; undefined when it is not attached. */
async function loopInfo(ctx: DiskContext, name: string): Promise<LoopInfo | undefined> {
  try {
    const backing = await readFile(`${ctx.sysfs}/block/${name}/loop/backing_file`, "utf8");
    const ro = await readFile(`${ctx.sysfs}/block/${name}/ro`, "utf8");
    return {
      device: `/dev/${name}`,
      backingFile: backing.endsWith("\n") ? backing.slice(0, -1) : backing,
      readOnly: ro.trim() === "1",
    };
  } catch (error) {
    // A device detached between listing and reading (by another VM's create, or anyone) reads as gone.
    if (isErrno(error, "ENOENT") || isErrno(error, "ENODEV") || isErrno(error, "ENXIO")) return undefined;
    throw error;
  }
}

/** A loop device that is attached to a file inside the state directory. */
export async function bangerLoop(ctx: DiskContext, device: string, field: string): Promise<LoopInfo> {
  const info = await loopInfo(ctx, loopName(device, field));
  if (!info) throw new FailedPreconditionError(`${field} ${device} is not attached`, { reason: "LOOP_NOT_ATTACHED" });
  if (!isInsideStateDir(ctx.stateDir, info.backingFile)) {
    throw new PermissionDeniedError(`${field} ${device} is not backed by a file of banger's`, {
      reason: "NOT_BANGERS",
    });
  }
  return info;
}

/** Loop devices whose backing file is inside the state directory. */
export async function listLoops(ctx: DiskContext): Promise<LoopInfo[]> {
  let names: string[];
  try {
    names = await readdir(`${ctx.sysfs}/block`);
  } catch (error) {
    if (isErrno(error, "ENOENT")) return [];
    throw error;
  }
  const loops = names.filter((n) => LOOP_NAME.test(n)).sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));
  const infos = await Promise.all(loops.map((name) => loopInfo(ctx, name)));
  return infos.filter((i): i is LoopInfo => i !== undefined && isInsideStateDir(ctx.stateDir, i.backingFile));
}

export async function attachLoop(
  ctx: DiskContext,
  req: { path: string; readOnly: boolean },
  signal?: AbortSignal,
): Promise<{ device: string }> {
  const { runner, config, stateDir } = ctx;
  const handle = await openConfined(stateDir, req.path, { write: !req.readOnly, ownerUid: config.ownerUid });
  let stdout: string;
  try {
    ({ stdout } = await runner.run(
      ["losetup", "--find", "--show", ...(req.readOnly ? ["--read-only"] : []), "/dev/fd/3"],
      { fds: [handle.fd], ...opts(signal) },
    ));
  } finally {
    await handle.close();
  }
  const device = stdout.trim();
  const name = LOOP_DEVICE.exec(device)?.[1];
  if (name === undefined) {
    throw new InternalError(`losetup printed ${JSON.stringify(device)} instead of a loop device`, {
      reason: "UNEXPECTED_TOOL_OUTPUT",
    });
  }
  // Verify: the kernel must record the requested file (it is the file that was opened and checked).
  const info = await loopInfo(ctx, name);
  if (info?.backingFile !== req.path) {
    if (info) await runner.run(["losetup", "-d", device]);
    throw new FailedPreconditionError(`${req.path} moved while it was being attached`, { reason: "PATH_CHANGED" });
  }
  return { device };
}

export async function detachLoop(
  ctx: DiskContext,
  req: { device: string; path: string },
  signal?: AbortSignal,
): Promise<{ existed: boolean }> {
  const name = loopName(req.device, "device");
  const path = confinedPath(ctx.stateDir, req.path);
  const info = await loopInfo(ctx, name);
  if (!info) return { existed: false };
  if (info.backingFile !== path) {
    throw new PermissionDeniedError(`${req.device} is not backed by ${path}`, { reason: "NOT_BANGERS" });
  }
  try {
    await ctx.runner.run(["losetup", "-d", req.device], opts(signal));
  } catch (error) {
    if ((await loopInfo(ctx, name)) === undefined) return { existed: true }; // detached meanwhile
    throw error;
  }
  return { existed: true };
}
