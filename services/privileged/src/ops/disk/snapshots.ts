/**
 * A VM's dm-snapshot (`bgr-<vm_id>-root`, uuid `BANGER-<vm_id>`) over two of banger's loops. Its
 * removal re-reads the kernel's uuid first, so the helper never removes a dm device banger did not make.
 */
import {
  AlreadyExistsError,
  FailedPreconditionError,
  HostCommandError,
  InternalError,
  InvalidArgumentError,
  PermissionDeniedError,
} from "@banger/common/errors";
import { loopName } from "../../validate/disk.js";
import { snapshotName, snapshotUuid, validVmId } from "../../validate/ids.js";
import { withUndo } from "../undo.js";
import { opts, type DiskContext } from "./context.js";
import { bangerLoop } from "./loops.js";
import type { SnapshotInfo } from "./types.js";

/** banger's dm uuid prefix, as snapshotUuid spells it. */
const UUID_PREFIX = snapshotUuid("x").slice(0, -1);

/** A dm device's uuid; undefined when no device has that name. */
export async function dmUuid(ctx: DiskContext, name: string, signal?: AbortSignal): Promise<string | undefined> {
  try {
    const { stdout } = await ctx.runner.run(
      ["dmsetup", "info", "-c", "--noheadings", "-o", "uuid", name],
      opts(signal),
    );
    return stdout.trim();
  } catch (error) {
    if (error instanceof HostCommandError && /does not exist/i.test(error.stderrTail)) return undefined;
    throw error;
  }
}

function requireDeviceMapper(ctx: DiskContext): void {
  const status = ctx.deviceMapper();
  if (!status.usable) {
    throw new FailedPreconditionError(`the kernel has no usable device-mapper (${status.why})`, {
      reason: "DEVICE_MAPPER_ABSENT",
    });
  }
}

export async function createSnapshot(
  ctx: DiskContext,
  req: { vmId: string; originDevice: string; cowDevice: string },
  signal?: AbortSignal,
): Promise<{ name: string; device: string }> {
  const { runner, config } = ctx;
  const vmId = validVmId(req.vmId);
  loopName(req.originDevice, "origin_device");
  loopName(req.cowDevice, "cow_device");
  if (req.originDevice === req.cowDevice) {
    throw new InvalidArgumentError("origin_device and cow_device must differ", { reason: "SAME_DEVICE" });
  }
  requireDeviceMapper(ctx);
  await bangerLoop(ctx, req.originDevice, "origin_device");
  await bangerLoop(ctx, req.cowDevice, "cow_device");
  const name = snapshotName(vmId);
  const uuid = snapshotUuid(vmId);
  const existing = await dmUuid(ctx, name, signal);
  if (existing === uuid) {
    throw new AlreadyExistsError(`VM ${vmId} already has its dm-snapshot ${name}`, { reason: "SNAPSHOT_EXISTS" });
  }
  if (existing !== undefined) {
    throw new PermissionDeniedError(`dm device ${name} exists but banger did not make it`, {
      reason: "NOT_BANGERS",
    });
  }
  const { stdout } = await runner.run(["blockdev", "--getsz", req.originDevice], opts(signal));
  const sectors = stdout.trim();
  if (!/^[1-9][0-9]*$/.test(sectors)) {
    throw new InternalError(`blockdev printed ${JSON.stringify(sectors)} as the size of ${req.originDevice}`, {
      reason: "UNEXPECTED_TOOL_OUTPUT",
    });
  }
  const node = ctx.mapperNode(name);
  await withUndo(async (onUndo) => {
    const table = `0 ${sectors} snapshot ${req.originDevice} ${req.cowDevice} P 8`;
    await runner.run(["dmsetup", "create", name, "--uuid", uuid, "--table", table], opts(signal));
    // Undo runs even when the request was cancelled: no signal.
    onUndo(() => runner.run(["dmsetup", "remove", name]));
    await runner.run(["chown", `${config.ownerUid}:${config.ownerGid}`, node], opts(signal));
  });
  return { name, device: node };
}

export async function removeSnapshot(
  ctx: DiskContext,
  req: { vmId: string },
  signal?: AbortSignal,
): Promise<{ existed: boolean }> {
  const vmId = validVmId(req.vmId);
  if (!ctx.deviceMapper().usable) return { existed: false };
  const name = snapshotName(vmId);
  const uuid = await dmUuid(ctx, name, signal);
  if (uuid === undefined) return { existed: false };
  if (uuid !== snapshotUuid(vmId)) {
    throw new PermissionDeniedError(`dm device ${name} exists but banger did not make it`, {
      reason: "NOT_BANGERS",
    });
  }
  try {
    await ctx.runner.run(["dmsetup", "remove", name], opts(signal));
  } catch (error) {
    if ((await dmUuid(ctx, name)) === undefined) return { existed: true }; // removed meanwhile
    throw error;
  }
  return { existed: true };
}

/** dm devices whose uuid has banger's prefix; empty where the kernel has no device-mapper. */
export async function listSnapshots(ctx: DiskContext): Promise<SnapshotInfo[]> {
  if (!ctx.deviceMapper().usable) return [];
  const { stdout } = await ctx.runner.run([
    "dmsetup",
    "info",
    "-c",
    "--noheadings",
    "-o",
    "name,uuid",
    "--separator",
    ",",
  ]);
  return stdout.split("\n").flatMap((line): SnapshotInfo[] => {
    const comma = line.lastIndexOf(",");
    if (comma < 0) return []; // "No devices found"
    const name = line.slice(0, comma).trim();
    const uuid = line.slice(comma + 1).trim();
    if (!uuid.startsWith(UUID_PREFIX)) return [];
    return [{ name, uuid, vmId: vmIdOrEmpty(uuid.slice(UUID_PREFIX.length)), device: ctx.mapperNode(name) }];
  });
}

function vmIdOrEmpty(value: string): string {
  try {
    return validVmId(value);
  } catch {
    return "";
  }
}
