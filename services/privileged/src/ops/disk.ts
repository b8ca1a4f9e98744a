/**
 * Loop devices, dm-snapshots and changes to a VM's root block device.
 *
 * Host files are named by the caller only as paths inside banger's state
 * directory; they are opened by `openConfined` and the open file (not the
 * path) is handed to losetup. Loop and dm teardown re-reads the kernel's own
 * record (the loop's backing file in sysfs, the dm uuid) before acting, so the
 * helper never detaches or removes a device that is not banger's. Guest files
 * are written with one batched `debugfs` script and verified by reading them
 * back. e2fsck and debugfs parse filesystems a guest has written: they run as
 * the owner, on a device or file the owner may open, so a parser bug gains an
 * attacker nothing the owner did not have. Every request is validated
 * completely before the first host command runs: a refused request changes
 * nothing.
 */
import type { Runner } from "@banger/common/host-runner";
import type { HelperConfig } from "../config.js";
import { checkFilesystem } from "./disk/root-disk.js";
import { diskContext } from "./disk/context.js";
import { removeGuestFiles, writeGuestFiles } from "./disk/guest-files.js";
import { attachLoop, detachLoop, listLoops } from "./disk/loops.js";
import { createSnapshot, listSnapshots, removeSnapshot } from "./disk/snapshots.js";
import type { GuestFileSpec, LoopInfo, SnapshotInfo } from "./disk/types.js";

export type { GuestFileSpec, LoopInfo, SnapshotInfo } from "./disk/types.js";
export { MAX_GUEST_FILES, MAX_GUEST_FILE_BYTES } from "../validate/disk.js";

export interface DiskOps {
  attachLoop(req: { path: string; readOnly: boolean }, signal?: AbortSignal): Promise<{ device: string }>;
  detachLoop(req: { device: string; path: string }, signal?: AbortSignal): Promise<{ existed: boolean }>;
  createSnapshot(
    req: { vmId: string; originDevice: string; cowDevice: string },
    signal?: AbortSignal,
  ): Promise<{ name: string; device: string }>;
  removeSnapshot(req: { vmId: string }, signal?: AbortSignal): Promise<{ existed: boolean }>;
  checkFilesystem(req: { vmId: string }, signal?: AbortSignal): Promise<{ exitCode: number; outputTail: string }>;
  writeGuestFiles(
    req: { vmId: string; files: readonly GuestFileSpec[] },
    signal?: AbortSignal,
  ): Promise<{ written: number }>;
  removeGuestFiles(req: { vmId: string; paths: readonly string[] }, signal?: AbortSignal): Promise<{ removed: number }>;
  /** Loop devices whose backing file is inside the state directory. */
  listLoops(): Promise<LoopInfo[]>;
  /** dm devices whose uuid has banger's prefix; empty where the kernel has no device-mapper. */
  listSnapshots(): Promise<SnapshotInfo[]>;
}

export interface DiskDeps {
  readonly runner: Runner;
  readonly config: HelperConfig;
  /** Where sysfs is mounted (tests point it at a fake tree). Default `/sys`. */
  readonly sysfsRoot?: string;
  /** Where device nodes live (`<devRoot>/mapper/control`). Default `/dev`. */
  readonly devRoot?: string;
  /** Where procfs is mounted (`<procRoot>/misc` tells whether the device-mapper driver is there). Default `/proc`. */
  readonly procRoot?: string;
}

export function createDiskOps(deps: DiskDeps): DiskOps {
  const ctx = diskContext(deps);
  return {
    attachLoop: (req, signal) => attachLoop(ctx, req, signal),
    detachLoop: (req, signal) => detachLoop(ctx, req, signal),
    createSnapshot: (req, signal) => createSnapshot(ctx, req, signal),
    removeSnapshot: (req, signal) => removeSnapshot(ctx, req, signal),
    checkFilesystem: (req, signal) => checkFilesystem(ctx, req, signal),
    writeGuestFiles: (req, signal) => writeGuestFiles(ctx, req, signal),
    removeGuestFiles: (req, signal) => removeGuestFiles(ctx, req, signal),
    listLoops: () => listLoops(ctx),
    listSnapshots: () => listSnapshots(ctx),
  };
}
