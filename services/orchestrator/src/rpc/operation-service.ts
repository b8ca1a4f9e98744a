import { InvalidArgumentError, implementService, isOpId } from "@banger/common";
import { OperationKind, OperationService } from "@banger/gen/banger/v1/operation_pb.js";
import type { ServiceImpl } from "@connectrpc/connect";
import type { Operations } from "../core/operations.js";
import { OPERATION_KINDS, type OperationKind as Kind } from "../store/index.js";
import { kindToProto, operationToProto } from "./to-proto.js";

const DEFAULT_LIST_LIMIT = 50;
const MAX_LIST_LIMIT = 1000;

/** `banger.v1.OperationService`: look up, watch, cancel and list long work. */
export function createOperationService(operations: Operations): ServiceImpl<typeof OperationService> {
  return implementService(OperationService, {
    async getOperation(req) {
      const op = await operations.get(validOpId(req.id));
      return { operation: operationToProto(op, operations.cancelRequested(op.id), operations.progress(op.id)) };
    },
    async *watchOperation(req, ctx) {
      // The client going away ends this stream, never the operation.
      for await (const op of operations.watch(validOpId(req.id), ctx.signal)) {
        yield { operation: operationToProto(op, operations.cancelRequested(op.id), operations.progress(op.id)) };
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

function kindFromProto(kind: OperationKind): Kind {
  const found = OPERATION_KINDS.find((k) => kindToProto(k) === kind);
  if (found === undefined) throw new InvalidArgumentError(`unknown operation kind ${kind}`, { reason: "INVALID_KIND" });
  return found;
}
