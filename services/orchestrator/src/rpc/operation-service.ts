import { InvalidArgumentError, implementService, isOpId } from "@banger/common";
import {
  OperationKind,
  OperationService,
  OperationState,
  StageState,
  type OperationSchema,
} from "@banger/gen/banger/v1/operation_pb.js";
import { ImageSchema, KernelSchema, VmSchema } from "@banger/gen/banger/v1/resources_pb.js";
import { fromJson, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import type { Operations, StageProgress } from "../core/operations.js";
import {
  OPERATION_KINDS,
  type OperationKind as Kind,
  type OperationRecord,
  type OperationStage,
} from "../store/index.js";

const DEFAULT_LIST_LIMIT = 50;
const MAX_LIST_LIMIT = 1000;

/** `banger.v1.OperationService`: look up, watch, cancel and list long work. */
export function createOperationService(operations: Operations): ServiceImpl<typeof OperationService> {
  return implementService(OperationService, {
    async getOperation(req) {
      const op = await operations.get(validOpId(req.id));
      return { operation: operationToProto(op, false, operations.progress(op.id)) };
    },
    async *watchOperation(req, ctx) {
      // The client going away ends this stream, never the operation.
      for await (const op of operations.watch(validOpId(req.id), ctx.signal)) {
        yield { operation: operationToProto(op, false, operations.progress(op.id)) };
      }
    },
    async cancelOperation(req) {
      const { operation, cancelRequested } = await operations.cancel(validOpId(req.id));
      return { operation: operationToProto(operation, cancelRequested, operations.progress(operation.id)) };
    },
    async listOperations(req) {
      if (req.limit > MAX_LIST_LIMIT) {
        throw new InvalidArgumentError(`limit must be at most ${MAX_LIST_LIMIT}`, { reason: "INVALID_LIMIT" });
      }
      const kind = req.kind === OperationKind.UNSPECIFIED ? undefined : kindFromProto(req.kind);
      const list = await operations.list({
        target: req.target === "" ? undefined : req.target,
        kind,
        activeOnly: req.activeOnly,
        limit: req.limit === 0 ? DEFAULT_LIST_LIMIT : req.limit,
      });
      return { operations: list.map((op) => operationToProto(op)) };
    },
  });
}

function validOpId(id: string): string {
  if (!isOpId(id)) {
    throw new InvalidArgumentError("operation id must be op- followed by 12 lowercase hex digits", {
      reason: "INVALID_OP_ID",
    });
  }
  return id;
}

// "create-vm" ↔ OperationKind.CREATE_VM, by name, so the two lists cannot drift apart silently.
const protoKindName = (kind: Kind) => kind.toUpperCase().replaceAll("-", "_") as keyof typeof OperationKind;

function kindToProto(kind: Kind): OperationKind {
  return OperationKind[protoKindName(kind)];
}

function kindFromProto(kind: OperationKind): Kind {
  const found = OPERATION_KINDS.find((k) => kindToProto(k) === kind);
  if (found === undefined) throw new InvalidArgumentError(`unknown operation kind ${kind}`, { reason: "INVALID_KIND" });
  return found;
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
    result: resultToProto(op),
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

/** The result is stored as `{ vm | image | kernel: <proto JSON> }`. */
function resultToProto(op: OperationRecord): NonNullable<MessageInitShape<typeof OperationSchema>["result"]> {
  const result = op.result;
  if (!result) return { case: undefined };
  if (result["vm"] !== undefined) return { case: "vm", value: fromJson(VmSchema, result["vm"]) };
  if (result["image"] !== undefined) return { case: "image", value: fromJson(ImageSchema, result["image"]) };
  if (result["kernel"] !== undefined) return { case: "kernel", value: fromJson(KernelSchema, result["kernel"]) };
  return { case: undefined };
}
