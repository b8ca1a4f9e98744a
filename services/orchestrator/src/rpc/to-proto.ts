/**
 * Domain records → banger.v1 messages: the one mapping of each type (VM,
 * image, kernel, operation and its result), used by the unary RPCs and by
 * GetOperation/WatchOperation alike. Core and the store never see the wire form.
 */
import { OperationKind, OperationState, StageState, type OperationSchema } from "@banger/gen/banger/v1/operation_pb.js";
import {
  AgentHealth,
  ImageSource,
  RootDiskStrategy,
  VmmKind,
  VmState,
  type ImageSchema,
  type KernelSchema,
  type SnapshotSchema,
  type VmSchema,
} from "@banger/gen/banger/v1/resources_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { StageProgress } from "../core/operations.js";
import type {
  ImageRecord,
  KernelSnapshot,
  OperationKind as Kind,
  OperationRecord,
  OperationStage,
  SnapshotView,
  VmSnapshot,
} from "../store/index.js";

const VM_STATE: Record<VmSnapshot["state"], VmState> = {
  creating: VmState.CREATING,
  starting: VmState.STARTING,
  running: VmState.RUNNING,
  stopping: VmState.STOPPING,
  stopped: VmState.STOPPED,
  failed: VmState.FAILED,
  deleting: VmState.DELETING,
  paused: VmState.PAUSED,
};

const VMM: Record<VmSnapshot["vmm"], VmmKind> = {
  firecracker: VmmKind.FIRECRACKER,
  "qemu-microvm": VmmKind.QEMU_MICROVM,
};

const ROOT_DISK: Record<VmSnapshot["rootDiskStrategy"], RootDiskStrategy> = {
  clone: RootDiskStrategy.CLONE,
  "dm-snapshot": RootDiskStrategy.DM_SNAPSHOT,
};

const AGENT_HEALTH: Record<VmSnapshot["agentHealth"], AgentHealth> = {
  "": AgentHealth.UNSPECIFIED,
  ok: AgentHealth.OK,
  unreachable: AgentHealth.UNREACHABLE,
  none: AgentHealth.NONE,
};

const IMAGE_SOURCE: Record<ImageRecord["source"], ImageSource> = {
  pulled: ImageSource.PULLED,
  registered: ImageSource.REGISTERED,
  promoted: ImageSource.PROMOTED,
  builtin: ImageSource.BUILTIN,
};

/** A VM (as it is now, or as an operation left it). */
/** A VM as the service shows it now (`savedAt`: a live view only, not kept in operation results). */
export function vmToProto(vm: VmSnapshot & { readonly savedAt?: Date }): MessageInitShape<typeof VmSchema> {
  return {
    name: vm.name,
    id: vm.id,
    image: vm.imageName,
    kernel: vm.kernelName,
    state: VM_STATE[vm.state],
    vcpu: vm.vcpu,
    memoryMib: vm.memoryMib,
    workDiskMib: BigInt(vm.workDiskMib),
    guestIp: vm.guestIp,
    mac: vm.mac,
    vsockCid: vm.vsockCid,
    nat: vm.nat,
    vmm: VMM[vm.vmm],
    rootDiskStrategy: ROOT_DISK[vm.rootDiskStrategy],
    pid: vm.pid,
    createTime: timestampFromDate(vm.createdAt),
    ...(vm.startedAt ? { startTime: timestampFromDate(vm.startedAt) } : {}),
    lastError: vm.lastError ?? "",
    pendingChanges: Object.entries(vm.pendingChanges).map(([key, value]) => `${key}=${JSON.stringify(value)}`),
    agentHealth: AGENT_HEALTH[vm.agentHealth],
    agentVersion: vm.agentVersion,
    publishedPorts: vm.publishedPorts.map((port) => ({ ...port })),
    ...(vm.savedAt ? { savedStateTime: timestampFromDate(vm.savedAt) } : {}),
  };
}

/** An image, with the VMs that use it when known. */
export function imageToProto(
  image: ImageRecord & { usedBy?: readonly string[] },
): MessageInitShape<typeof ImageSchema> {
  return {
    name: image.name,
    reference: image.reference ?? "",
    manifestDigest: image.manifestDigest ?? "",
    platform: image.platform,
    rootfsBytes: BigInt(image.rootfsBytes),
    workSeedBytes: BigInt(image.workSeedBytes),
    defaultKernel: image.defaultKernel ?? "",
    source: IMAGE_SOURCE[image.source],
    createTime: timestampFromDate(image.createdAt),
    usedBy: [...(image.usedBy ?? [])],
    config: {
      ...image.config,
      entrypoint: [...image.config.entrypoint],
      cmd: [...image.config.cmd],
      env: [...image.config.env],
    },
  };
}

export function snapshotToProto(snapshot: SnapshotView): MessageInitShape<typeof SnapshotSchema> {
  return {
    name: snapshot.name,
    vmName: snapshot.vmName,
    image: snapshot.imageName,
    kernel: snapshot.kernelName,
    vmm: snapshot.vmm,
    vcpu: snapshot.vcpu,
    memoryMib: snapshot.memoryMib,
    workDiskMib: BigInt(snapshot.workDiskMib),
    allocatedBytes: BigInt(snapshot.allocatedBytes),
    createTime: timestampFromDate(snapshot.createdAt),
  };
}

export function kernelToProto(kernel: KernelSnapshot): MessageInitShape<typeof KernelSchema> {
  return {
    name: kernel.name,
    version: kernel.version,
    kernelSha256: kernel.kernelSha256,
    kernelBytes: BigInt(kernel.kernelBytes),
    uncompressed: kernel.uncompressed,
    initrdBytes: BigInt(kernel.initrdBytes),
    hasModules: kernel.hasModules,
    isDefault: kernel.isDefault,
    createTime: timestampFromDate(kernel.createdAt),
    usedBy: [...kernel.usedBy],
  };
}

// "create-vm" ↔ OperationKind.CREATE_VM, by name, so the two lists cannot drift apart silently.
const protoKindName = (kind: Kind) => kind.toUpperCase().replaceAll("-", "_") as keyof typeof OperationKind;

export function kindToProto(kind: Kind): OperationKind {
  return OperationKind[protoKindName(kind)];
}

const STATE: Record<OperationRecord["state"], OperationState> = {
  pending: OperationState.PENDING,
  running: OperationState.RUNNING,
  succeeded: OperationState.SUCCEEDED,
  failed: OperationState.FAILED,
  cancelled: OperationState.CANCELLED,
};

const STAGE_STATE: Record<OperationStage["state"], StageState> = {
  pending: StageState.PENDING,
  running: StageState.RUNNING,
  done: StageState.DONE,
  failed: StageState.FAILED,
  skipped: StageState.SKIPPED,
  "rolled-back": StageState.ROLLED_BACK,
};

export function operationToProto(
  op: OperationRecord,
  cancelRequested = false,
  progress: ReadonlyMap<string, StageProgress> = new Map(),
): MessageInitShape<typeof OperationSchema> {
  return {
    id: op.id,
    kind: kindToProto(op.kind),
    state: STATE[op.state],
    target: op.target,
    stages: op.stages.map((stage) => {
      const elapsedMs = stage.startedAt ? (stage.endedAt ?? new Date()).getTime() - stage.startedAt.getTime() : 0;
      return {
        name: stage.name,
        state: STAGE_STATE[stage.state],
        ...(stage.startedAt ? { startTime: timestampFromDate(stage.startedAt) } : {}),
        ...(stage.endedAt ? { endTime: timestampFromDate(stage.endedAt) } : {}),
        elapsed: { seconds: BigInt(Math.floor(elapsedMs / 1000)), nanos: (elapsedMs % 1000) * 1_000_000 },
        message: stage.message,
        ...progressToProto(progress.get(stage.name)),
      };
    }),
    createTime: timestampFromDate(op.createdAt),
    updateTime: timestampFromDate(op.updatedAt),
    ...(op.endedAt ? { endTime: timestampFromDate(op.endedAt) } : {}),
    result: resultToProto(op.result),
    ...(op.error ? { error: { ...op.error } } : {}),
    cancelRequested,
  };
}

function progressToProto(progress: StageProgress | undefined) {
  if (!progress) return {};
  return {
    progress: {
      doneBytes: BigInt(progress.doneBytes),
      totalBytes: BigInt(progress.totalBytes),
      items: progress.items.map((item) => ({
        id: item.id,
        doneBytes: BigInt(item.doneBytes),
        totalBytes: BigInt(item.totalBytes),
        state: item.state,
      })),
    },
  };
}

/** The result oneof; none for an operation that produced nothing, or whose stored result is unreadable. */
function resultToProto(
  result: OperationRecord["result"],
): NonNullable<MessageInitShape<typeof OperationSchema>["result"]> {
  switch (result?.kind) {
    case "vm":
      return { case: "vm", value: vmToProto(result.vm) };
    case "image":
      return { case: "image", value: imageToProto(result.image) };
    case "kernel":
      return { case: "kernel", value: kernelToProto(result.kernel) };
    case "snapshot":
      return { case: "snapshot", value: snapshotToProto(result.snapshot) };
    default:
      return { case: undefined };
  }
}
