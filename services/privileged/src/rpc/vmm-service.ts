import { InvalidArgumentError } from "@banger/common/errors";
import { implementService } from "@banger/common/service-impl";
import { VmmKind } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { VmmService, VmmSignal } from "@banger/gen/banger/privileged/v1/vmm_pb.js";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  vmmStartDate,
  vmmStartTimeFromDate,
  type VmmKind as Kind,
  type VmmOps,
  type VmmProcessInfo,
} from "../ops/vmm.js";

/** `banger.privileged.v1.VmmService` over the VMM ops (which validate everything). */
export function createVmmService(ops: VmmOps): ServiceImpl<typeof VmmService> {
  return implementService(VmmService, {
    async launchVmm(req) {
      const kind = kindFromProto(req.kind);
      const launched = await ops.launch({ vmId: req.vmId, kind, qemu: req.qemu, logMaxBytes: req.logMaxBytes });
      return {
        pid: launched.pid,
        startTime: timestampFromDate(vmmStartDate(launched.startTime)),
        controlSocket: launched.controlSocket,
        logPath: launched.logPath,
        consolePath: launched.consolePath,
      };
    },
    async getVmm(req) {
      const startTime = requiredStartTime(req.startTime);
      const state = await ops.get({ vmId: req.vmId, pid: req.pid, startTime });
      return {
        running: state.running,
        cpuTimeMs: BigInt(Math.round(state.cpuTimeMs)),
        rssBytes: BigInt(state.rssBytes),
      };
    },
    signalVmm(req) {
      requiredStartTime(req.startTime);
      const signal = req.signal === VmmSignal.TERM ? "TERM" : req.signal === VmmSignal.KILL ? "KILL" : undefined;
      if (signal === undefined)
        throw new InvalidArgumentError("signal must be TERM or KILL", { reason: "INVALID_SIGNAL" });
      return ops.signal({ vmId: req.vmId, pid: req.pid, startTime: requiredStartTime(req.startTime), signal });
    },
    removeVmmFiles(req) {
      return ops.removeFiles({ vmId: req.vmId });
    },
  });
}

function requiredStartTime(startTime: Timestamp | undefined): bigint {
  if (startTime === undefined) {
    throw new InvalidArgumentError("start_time is required: it proves the pid is the VM's process", {
      reason: "START_TIME_REQUIRED",
    });
  }
  return vmmStartTimeFromDate(timestampDate(startTime));
}

function kindFromProto(kind: VmmKind): Kind {
  if (kind === VmmKind.FIRECRACKER) return "firecracker";
  if (kind === VmmKind.QEMU_MICROVM) return "qemu-microvm";
  throw new InvalidArgumentError("kind must be FIRECRACKER or QEMU_MICROVM", { reason: "INVALID_VMM_KIND" });
}

/** An inventory entry for a running VMM. */
export function vmmProcessToProto(p: VmmProcessInfo) {
  return {
    vmId: p.vmId,
    pid: p.pid,
    startTime: timestampFromDate(vmmStartDate(p.startTime)),
    kind: p.kind === "firecracker" ? VmmKind.FIRECRACKER : VmmKind.QEMU_MICROVM,
    uid: p.uid,
  };
}
