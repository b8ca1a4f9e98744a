import { InvalidArgumentError, NotFoundError } from "@banger/common";
import { type Insertable, type Kysely, type Selectable, sql, type Updateable } from "kysely";
import {
  corrupt,
  fromNullableTimestamp,
  fromTimestamp,
  isJsonObject,
  type JsonObject,
  type JsonValue,
  nullableStringField,
  oneOf,
  optionalStringField,
  parseJson,
  parseJsonObject,
  stringField,
  toJson,
  toTimestamp,
} from "./columns.js";
import { guardWrite } from "./errors.js";
import { type OperationResult, resultFromText, resultToJson, type UnreadableResult } from "./operation-result.js";
import type { OperationTable } from "./operation.table.js";
import type { Database } from "./schema.js";
import { inTransaction } from "./transaction.js";

export const OPERATION_KINDS = [
  "create-vm",
  "start-vm",
  "stop-vm",
  "restart-vm",
  "delete-vm",
  "pull-image",
  "promote-image",
  "import-kernel",
  "build-initramfs",
  "prepare-workspace",
  "snapshot-vm",
] as const;
export type OperationKind = (typeof OPERATION_KINDS)[number];

export const OPERATION_STATES = ["pending", "running", "succeeded", "failed", "cancelled"] as const;
export type OperationState = (typeof OPERATION_STATES)[number];
/** States of an operation that has not ended. */
export const ACTIVE_OPERATION_STATES = ["pending", "running"] as const satisfies readonly OperationState[];

export const STAGE_STATES = ["pending", "running", "done", "failed", "skipped", "rolled-back"] as const;
export type StageState = (typeof STAGE_STATES)[number];

/**
 * One step of an operation. Byte progress is live state: it is not stored
 * (an operation that a restart cut off is not resumed).
 */
export interface OperationStage {
  /** Stable kebab-case name, the same as `stage` in log lines. */
  readonly name: string;
  readonly state: StageState;
  readonly startedAt: Date | null;
  readonly endedAt: Date | null;
  /** A short human note; "" for none. */
  readonly message: string;
}

/** Why an operation failed or was cancelled. */
export interface OperationFailure {
  /** gRPC code name, e.g. "failed_precondition". */
  readonly code: string;
  /** Stable UPPER_SNAKE reason, e.g. "VM_NAME_TAKEN". */
  readonly reason: string;
  readonly message: string;
  /** The stage that failed. */
  readonly stage?: string;
  /** The helper or puller call that failed, e.g. "banger.privileged.v1.NetworkService/CreateTap". */
  readonly peerCall?: string;
  /** The last lines of the VMM's log. */
  readonly vmmLogTail?: string;
}

export interface OperationRecord {
  /** The op id of the call that began it. */
  readonly id: string;
  readonly kind: OperationKind;
  readonly state: OperationState;
  /** The VM, image or kernel name it acts on. */
  readonly target: string;
  readonly stages: readonly OperationStage[];
  /** What it produced, once succeeded; null when its kind produces nothing. */
  readonly result: OperationResult | UnreadableResult | null;
  readonly error: OperationFailure | null;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  /** Set exactly when `state` is succeeded, failed or cancelled. */
  readonly endedAt: Date | null;
}

export interface NewOperation {
  readonly id: string;
  readonly kind: OperationKind;
  readonly target: string;
  /** Default "pending". */
  readonly state?: OperationState;
  /** Default none yet. */
  readonly stages?: readonly OperationStage[];
  readonly createdAt: Date;
}

/** A change to an operation. Moving to an ended state sets `endedAt` to `updatedAt`. */
export interface OperationPatch {
  readonly updatedAt: Date;
  readonly state?: OperationState;
  readonly stages?: readonly OperationStage[];
  readonly result?: OperationResult | null;
  readonly error?: OperationFailure | null;
}

export interface OperationFilter {
  /** Only operations on this target. */
  readonly target?: string | undefined;
  readonly kind?: OperationKind | undefined;
  /** Only operations that have not ended. */
  readonly activeOnly?: boolean | undefined;
  /** At most this many (≥ 1). */
  readonly limit: number;
}

/** The error of an operation that an orchestrator restart cut off. */
export const INTERRUPTED_FAILURE: OperationFailure = {
  code: "aborted",
  reason: "INTERRUPTED",
  message: "cut off by an orchestrator restart",
};

/** Errors: AlreadyExistsError OPERATION_ID_TAKEN. */
export async function insertOperation(db: Kysely<Database>, operation: NewOperation): Promise<OperationRecord> {
  const state = operation.state ?? "pending";
  const createdAt = toTimestamp(operation.createdAt);
  const row: Insertable<OperationTable> = {
    id: operation.id,
    kind: operation.kind,
    state,
    target: operation.target,
    stages: toJson(stagesToJson(operation.stages ?? [])),
    result: null,
    error: null,
    created_at: createdAt,
    updated_at: createdAt,
    ended_at: isActive(state) ? null : createdAt,
  };
  const inserted = await guardWrite(db, { action: "insert", table: "operations", values: row }, () =>
    db.insertInto("operations").values(row).returningAll().executeTakeFirstOrThrow(),
  );
  return operationFromRow(inserted);
}

/** Applies `patch` and returns the operation as it now is. Errors: NotFoundError OPERATION_NOT_FOUND. */
export async function updateOperation(
  db: Kysely<Database>,
  id: string,
  patch: OperationPatch,
): Promise<OperationRecord> {
  const updatedAt = toTimestamp(patch.updatedAt);
  const values: Updateable<OperationTable> = { updated_at: updatedAt };
  if (patch.state !== undefined) {
    values.state = patch.state;
    values.ended_at = isActive(patch.state) ? null : updatedAt;
  }
  if (patch.stages !== undefined) values.stages = toJson(stagesToJson(patch.stages));
  if (patch.result !== undefined) values.result = patch.result && toJson(resultToJson(patch.result));
  if (patch.error !== undefined) values.error = patch.error && toJson(failureToJson(patch.error));

  const row = await guardWrite(db, { action: "update", table: "operations", values }, () =>
    db.updateTable("operations").set(values).where("id", "=", id).returningAll().executeTakeFirst(),
  );
  if (row === undefined) throw notFound(id);
  return operationFromRow(row);
}

export async function getOperation(db: Kysely<Database>, id: string): Promise<OperationRecord | undefined> {
  const row = await db.selectFrom("operations").selectAll().where("id", "=", id).executeTakeFirst();
  return row && operationFromRow(row);
}

/** Operations matching `filter`, newest first (ties: the later inserted first). */
export async function listOperations(db: Kysely<Database>, filter: OperationFilter): Promise<OperationRecord[]> {
  if (!Number.isSafeInteger(filter.limit) || filter.limit < 1) {
    throw new InvalidArgumentError(`operation list limit must be a positive integer, got ${filter.limit}`, {
      reason: "INVALID_LIMIT",
    });
  }
  let query = db.selectFrom("operations").selectAll();
  if (filter.target !== undefined) query = query.where("target", "=", filter.target);
  if (filter.kind !== undefined) query = query.where("kind", "=", filter.kind);
  if (filter.activeOnly === true) query = query.where("state", "in", ACTIVE_OPERATION_STATES);
  const rows = await query
    .orderBy("created_at", "desc")
    .orderBy(sql`rowid`, "desc")
    .limit(filter.limit)
    .execute();
  return rows.map(operationFromRow);
}

/**
 * Removes the operations that ended before `cutoff` (an operation under way is
 * never removed, however old). Returns how many went.
 */
export async function deleteOperationsEndedBefore(db: Kysely<Database>, cutoff: Date): Promise<number> {
  const result = await db
    .deleteFrom("operations")
    .where("state", "not in", ACTIVE_OPERATION_STATES)
    .where("ended_at", "is not", null)
    .where("ended_at", "<", toTimestamp(cutoff))
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}

/**
 * At start-up: every operation that had not ended was cut off by the restart
 * (nothing resumes it). Each becomes failed with INTERRUPTED_FAILURE, naming
 * the stage that was running, which is marked failed too. Returns them.
 */
export async function markInterrupted(db: Kysely<Database>, now: Date): Promise<OperationRecord[]> {
  return inTransaction(db, async (trx) => {
    const active = await trx
      .selectFrom("operations")
      .selectAll()
      .where("state", "in", ACTIVE_OPERATION_STATES)
      .orderBy("created_at")
      .execute();
    const interrupted: OperationRecord[] = [];
    for (const row of active) {
      const operation = operationFromRow(row);
      const running = operation.stages.find((stage) => stage.state === "running");
      const stages = operation.stages.map((stage) =>
        stage.state === "running" ? { ...stage, state: "failed" as const, endedAt: now } : stage,
      );
      const error: OperationFailure = running ? { ...INTERRUPTED_FAILURE, stage: running.name } : INTERRUPTED_FAILURE;
      interrupted.push(await updateOperation(trx, operation.id, { updatedAt: now, state: "failed", stages, error }));
    }
    return interrupted;
  });
}

function isActive(state: OperationState): boolean {
  return ACTIVE_OPERATION_STATES.some((active) => active === state);
}

function notFound(id: string): NotFoundError {
  return new NotFoundError(`operation ${id} does not exist`, { reason: "OPERATION_NOT_FOUND" });
}

function stagesToJson(stages: readonly OperationStage[]): JsonValue {
  return stages.map((stage) => ({
    name: stage.name,
    state: stage.state,
    startedAt: stage.startedAt && toTimestamp(stage.startedAt),
    endedAt: stage.endedAt && toTimestamp(stage.endedAt),
    message: stage.message,
  }));
}

function failureToJson(failure: OperationFailure): JsonObject {
  const json: JsonObject = { code: failure.code, reason: failure.reason, message: failure.message };
  if (failure.stage !== undefined) json["stage"] = failure.stage;
  if (failure.peerCall !== undefined) json["peerCall"] = failure.peerCall;
  if (failure.vmmLogTail !== undefined) json["vmmLogTail"] = failure.vmmLogTail;
  return json;
}

function operationFromRow(row: Selectable<OperationTable>): OperationRecord {
  const at = (column: string) => `operations.${column} of ${row.id}`;
  return {
    id: row.id,
    kind: oneOf(OPERATION_KINDS, row.kind, at("kind")),
    state: oneOf(OPERATION_STATES, row.state, at("state")),
    target: row.target,
    stages: stagesFromJson(parseJson(row.stages, at("stages")), at("stages")),
    result: row.result === null ? null : resultFromText(row.result, at("result")),
    error: row.error === null ? null : failureFromJson(parseJsonObject(row.error, at("error")), at("error")),
    createdAt: fromTimestamp(row.created_at, at("created_at")),
    updatedAt: fromTimestamp(row.updated_at, at("updated_at")),
    endedAt: fromNullableTimestamp(row.ended_at, at("ended_at")),
  };
}

function stagesFromJson(value: JsonValue, where: string): OperationStage[] {
  if (!Array.isArray(value)) throw corrupt(where, "not a list");
  return value.map((item) => {
    if (!isJsonObject(item)) throw corrupt(where, "a stage is not an object");
    return {
      name: stringField(item, "name", where),
      state: oneOf(STAGE_STATES, stringField(item, "state", where), where),
      startedAt: fromNullableTimestamp(nullableStringField(item, "startedAt", where), where),
      endedAt: fromNullableTimestamp(nullableStringField(item, "endedAt", where), where),
      message: stringField(item, "message", where),
    };
  });
}

function failureFromJson(json: JsonObject, where: string): OperationFailure {
  const stage = optionalStringField(json, "stage", where);
  const peerCall = optionalStringField(json, "peerCall", where);
  const vmmLogTail = optionalStringField(json, "vmmLogTail", where);
  return {
    code: stringField(json, "code", where),
    reason: stringField(json, "reason", where),
    message: stringField(json, "message", where),
    ...(stage === undefined ? {} : { stage }),
    ...(peerCall === undefined ? {} : { peerCall }),
    ...(vmmLogTail === undefined ? {} : { vmmLogTail }),
  };
}
