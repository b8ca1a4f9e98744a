/**
 * A VM's root disk as e2fsprogs see it. e2fsck and debugfs parse filesystems a guest has written:
 * they run as the owner, on a device or file the owner may open, so a parser bug gains an attacker
 * nothing the owner did not have.
 */
import type { FileHandle } from "node:fs/promises";
import { FailedPreconditionError, HostCommandError, NotFoundError, PermissionDeniedError } from "@banger/common/errors";
import { snapshotName, snapshotUuid, validVmId } from "../../validate/ids.js";
import { openConfined } from "../../validate/paths.js";
import { opts, present, type DiskContext } from "./context.js";
import { dmUuid } from "./snapshots.js";

const OUTPUT_TAIL_LINES = 20;
const OUTPUT_TAIL_CHARS = 4096;
const ALL_EXIT_CODES = Array.from({ length: 256 }, (_, i) => i);

/** A VM's root disk as e2fsprogs name it: a path, and the open files it refers to (fd 3, 4, …). */
export interface RootDisk {
  readonly path: string;
  readonly fds: readonly number[];
  /** For messages: the device or file behind `path`. */
  readonly shown: string;
}

/**
 * Runs `body` with the VM's root disk as e2fsprogs (running as the owner)
 * name it: the VM's dm-snapshot when there is one (and it is banger's; its
 * node is the owner's), else the owner's clone `<stateDir>/vms/<vm_id>/root.ext4`,
 * opened by `openConfined` and handed over as `/dev/fd/3` (the tool reopens
 * that very file, with the owner's rights).
 */
export async function withRootDisk<T>(
  ctx: DiskContext,
  vmId: string,
  signal: AbortSignal | undefined,
  body: (disk: RootDisk) => Promise<T>,
): Promise<T> {
  const { config, stateDir, mapperNode } = ctx;
  const name = snapshotName(vmId);
  if (ctx.deviceMapper().usable && (await present(mapperNode(name)))) {
    const uuid = await dmUuid(ctx, name, signal);
    if (uuid === snapshotUuid(vmId)) return body({ path: mapperNode(name), fds: [], shown: mapperNode(name) });
    if (uuid !== undefined) {
      throw new PermissionDeniedError(`dm device ${name} exists but banger did not make it`, {
        reason: "NOT_BANGERS",
      });
    }
  }
  const image = ctx.vmRootImage(vmId);
  let handle: FileHandle;
  try {
    handle = await openConfined(stateDir, image, { write: true, ownerUid: config.ownerUid });
  } catch (error) {
    if (error instanceof NotFoundError) {
      throw new FailedPreconditionError(`VM ${vmId} has no root disk (no dm-snapshot, no ${image})`, {
        reason: "VM_DISK_NOT_ATTACHED",
        cause: error,
      });
    }
    throw error;
  }
  try {
    return await body({ path: "/dev/fd/3", fds: [handle.fd], shown: image });
  } finally {
    await handle.close();
  }
}

/** Runs a debugfs script (`-w` when `write`) on a VM's root disk, as the owner. */
export async function debugfs(
  ctx: DiskContext,
  disk: RootDisk,
  lines: readonly string[],
  write: boolean,
  signal?: AbortSignal,
) {
  const result = await ctx.runner.run(["debugfs", ...(write ? ["-w"] : []), "-f", "-", disk.path], {
    stdin: `${lines.join("\n")}\n`,
    fds: disk.fds,
    ...ctx.asOwner,
    ...opts(signal),
  });
  // debugfs goes on (and exits 0) when it cannot open the disk: every command then fails.
  refuseUnopened(disk, result.stderr);
  return result;
}

/** CheckFilesystem: `e2fsck -fy` on the VM's root disk, as the owner. */
export async function checkFilesystem(
  ctx: DiskContext,
  req: { vmId: string },
  signal?: AbortSignal,
): Promise<{ exitCode: number; outputTail: string }> {
  const vmId = validVmId(req.vmId);
  return withRootDisk(ctx, vmId, signal, async (disk) => {
    const argv = ["e2fsck", "-fy", disk.path];
    // Every exit code is taken here so that a failure keeps e2fsck's stdout, where it reports.
    const result = await ctx.runner.run(argv, {
      okCodes: ALL_EXIT_CODES,
      fds: disk.fds,
      ...ctx.asOwner,
      ...opts(signal),
    });
    const output = [result.stderr.trimEnd(), result.stdout.trimEnd()].filter((s) => s !== "").join("\n");
    if (result.code > 1) {
      refuseUnopened(disk, output);
      throw new HostCommandError(argv, result.code, output);
    }
    return { exitCode: result.code, outputTail: tail(output) };
  });
}

/**
 * e2fsprogs report a disk they may not open on stderr ("Permission denied
 * while trying to open …"); as they run as the owner, the owner may not open
 * it. (Other open failures, such as a bad superblock, stay the tool's error.)
 */
function refuseUnopened(disk: RootDisk, stderr: string): void {
  const line = stderr.split("\n").find((l) => /Permission denied while trying to open /.test(l));
  if (line === undefined) return;
  throw new PermissionDeniedError(
    `the owner may not open ${disk.shown}, and e2fsprogs run as the owner (${line.trim()})`,
    {
      reason: "OWNER_CANNOT_OPEN_DISK",
    },
  );
}

function tail(text: string, lines = OUTPUT_TAIL_LINES): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n").slice(-OUTPUT_TAIL_CHARS);
}
