import { InvalidArgumentError } from "@banger/common/errors";
import { implementService } from "@banger/common/service-impl";
import { DiskService, GuestDisk } from "@banger/gen/banger/privileged/v1/disk_pb.js";
import type { ServiceImpl } from "@connectrpc/connect";
import type { DiskOps } from "../ops/disk.js";

/** `banger.privileged.v1.DiskService` over the disk ops (which validate everything). */
export function createDiskService(ops: DiskOps): ServiceImpl<typeof DiskService> {
  return implementService(DiskService, {
    attachLoop: (req, ctx) => ops.attachLoop({ path: req.path, readOnly: req.readOnly }, ctx.signal),
    detachLoop: (req, ctx) => ops.detachLoop({ device: req.device, path: req.path }, ctx.signal),
    createSnapshot: (req, ctx) =>
      ops.createSnapshot({ vmId: req.vmId, originDevice: req.originDevice, cowDevice: req.cowDevice }, ctx.signal),
    removeSnapshot: (req, ctx) => ops.removeSnapshot({ vmId: req.vmId }, ctx.signal),
    checkFilesystem: (req, ctx) => {
      checkDisk(req.disk);
      return ops.checkFilesystem({ vmId: req.vmId }, ctx.signal);
    },
    writeGuestFiles: (req, ctx) => {
      checkDisk(req.disk);
      const files = req.files.map((f) => ({ path: f.path, content: f.content, mode: f.mode, uid: f.uid, gid: f.gid }));
      return ops.writeGuestFiles({ vmId: req.vmId, files }, ctx.signal);
    },
    removeGuestFiles: (req, ctx) => {
      checkDisk(req.disk);
      return ops.removeGuestFiles({ vmId: req.vmId, paths: req.paths }, ctx.signal);
    },
  });
}

/** Only the root device exists so far; an unknown enum value is refused, not guessed. */
function checkDisk(disk: GuestDisk): void {
  if (disk !== GuestDisk.UNSPECIFIED && disk !== GuestDisk.ROOT) {
    throw new InvalidArgumentError(`disk ${Number(disk)} is not a known guest disk`, { reason: "INVALID_DISK" });
  }
}
