import { codeName, codeOfKind, implementService } from "@banger/common";
import {
  CheckStatus,
  SystemService,
  type DoctorResponseSchema,
  type PruneResponseSchema,
  type ServiceStatusSchema,
} from "@banger/gen/banger/v1/system_pb.js";
import type { ServiceImpl } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { HostCapacity } from "../core/capacity.js";
import type { CheckStatus as CoreCheckStatus, Doctor, DoctorReport } from "../core/doctor.js";
import type { PruneReport, Pruner } from "../core/prune.js";
import { collectStatus, type PeerProbe, type ServiceHealth } from "../core/status.js";
import { scopeOf } from "./scope.js";

export interface SystemServiceDeps {
  readonly self: () => ServiceHealth;
  readonly peers: readonly PeerProbe[];
  readonly doctor: Doctor;
  readonly pruner: Pruner;
  readonly capacity: () => Promise<HostCapacity>;
}

export function createSystemService(deps: SystemServiceDeps): ServiceImpl<typeof SystemService> {
  return implementService(SystemService, {
    async getStatus(_req, ctx) {
      const services = await collectStatus(deps.self(), deps.peers, scopeOf(ctx));
      return { services: services.map(serviceStatusToProto) };
    },
    async doctor(req, ctx) {
      return doctorReportToProto(await deps.doctor.run(req.clientVersion, scopeOf(ctx)));
    },
    async prune(req, ctx) {
      return pruneReportToProto(await deps.pruner.prune({ all: req.all, force: req.force }, scopeOf(ctx)));
    },
    async getCapacity() {
      const capacity = await deps.capacity();
      return {
        hostCpus: capacity.hostCpus,
        hostMemoryBytes: BigInt(capacity.hostMemoryBytes),
        stateDir: capacity.stateDir,
        stateFsSizeBytes: BigInt(capacity.stateFsSizeBytes),
        stateFsUsedBytes: BigInt(capacity.stateFsUsedBytes),
        allocatedBytes: BigInt(capacity.allocatedBytes),
        vms: capacity.vms.map((vm) => ({
          name: vm.name,
          rootDiskAllocatedBytes: BigInt(vm.rootDiskAllocatedBytes),
          workDiskAllocatedBytes: BigInt(vm.workDiskAllocatedBytes),
        })),
      };
    },
  });
}

export function serviceStatusToProto(health: ServiceHealth): MessageInitShape<typeof ServiceStatusSchema> {
  const status: MessageInitShape<typeof ServiceStatusSchema> = {
    name: health.name,
    socket: health.socket,
    reachable: health.identity !== undefined,
    ...health.identity,
  };
  if (health.error) {
    status.errorCode = codeName(codeOfKind(health.error.kind));
    status.errorMessage = health.error.message;
  }
  return status;
}

const CHECK_STATUS: Record<CoreCheckStatus, CheckStatus> = {
  ok: CheckStatus.OK,
  warn: CheckStatus.WARN,
  fail: CheckStatus.FAIL,
};

export function doctorReportToProto(report: DoctorReport): MessageInitShape<typeof DoctorResponseSchema> {
  return {
    checks: report.checks.map((c) => ({
      name: c.name,
      status: CHECK_STATUS[c.status],
      detail: c.detail,
      hint: c.hint,
      capability: c.capability,
    })),
    ok: report.ok,
    rootDiskStrategy: report.rootDiskStrategy,
    vmm: report.vmm,
  };
}

export function pruneReportToProto(report: PruneReport): MessageInitShape<typeof PruneResponseSchema> {
  const cache = "error" in report.cache ? undefined : report.cache;
  return {
    retentionDays: report.retentionDays,
    removedOperations: report.removedOperations,
    removedBlobs: cache?.removedBlobs ?? 0,
    cacheFreedBytes: BigInt(cache?.freedBytes ?? 0),
    cacheError: "error" in report.cache ? report.cache.error : "",
    unused: report.unused.map((item) => ({ ...item, bytes: BigInt(item.bytes) })),
  };
}
