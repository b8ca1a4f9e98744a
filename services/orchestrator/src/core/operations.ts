/**
 * Long work as operations: persisted (so GetOperation answers after a
 * restart), watched by any number of clients (closing one never cancels the
 * work), cancelled on request. The work runs detached from the RPC that began
 * it, in the op id context of that RPC, so every log line keeps its op id.
 */
import { NotFoundError, currentOpId, mintOpId, type Logger } from "@banger/common";
import type { Kysely } from "kysely";
import {
  getOperation,
  insertOperation,
  listOperations,
  markInterrupted,
  updateOperation,
  type Database,
  type OperationFilter,
  type OperationKind,
  type OperationPatch,
  type OperationRecord,
  type OperationResult,
} from "../store/index.js";
import { createContext, type RunState } from "./operation/context.js";
import { failureOf } from "./operation/failure.js";
import { watchOperation, type Live } from "./operation/watch.js";

/** What the work of an operation gets: its id, a cancel signal and stages. */
export interface OperationContext {
  readonly id: string;
  readonly signal: AbortSignal;
  /** Runs one stage: recorded as running, then done or failed, with its duration, in the record and the log. */
  stage<T>(name: string, work: () => Promise<T>): Promise<T>;
  /**
   * Records a stage that another service runs (the puller's stages): call it
   * with "running" when it starts and "done" when it ends.
   */
  track(name: string, state: "running" | "done", message?: string): Promise<void>;
  /**
   * Leaves a note on a stage (shown with it when it ends: "kernel done (9.1 s): imported …"),
   * for what a user should hear of: a choice made for them, a fallback.
   */
  note(name: string, message: string): Promise<void>;
  /**
   * Live byte progress of a running stage (not stored: a restart does not
   * resume the work). Watchers see it at most a few times a second.
   */
  progress(stage: string, progress: StageProgress): void;
}

/** Byte progress of one stage, with one entry per item (an image layer, say). */
export interface StageProgress {
  readonly doneBytes: number;
  readonly totalBytes: number;
  readonly items: readonly { id: string; doneBytes: number; totalBytes: number; state: string }[];
}

export interface Operations {
  /** Persists a new running operation and starts `work` in the background; returns the record at once. */
  start(
    kind: OperationKind,
    target: string,
    work: (op: OperationContext) => Promise<OperationResult | null>,
  ): Promise<OperationRecord>;
  get(id: string): Promise<OperationRecord>;
  list(filter: OperationFilter): Promise<OperationRecord[]>;
  /** Asks a running operation to stop; returns it as it is now (ended ones unchanged). */
  cancel(id: string): Promise<{ operation: OperationRecord; cancelRequested: boolean }>;
  /** The operation now, then after every change, until it ends or `signal` aborts. */
  watch(id: string, signal: AbortSignal): AsyncIterable<OperationRecord>;
  /** Whether a running operation was asked to stop (it is unwinding); false once it ended. */
  cancelRequested(id: string): boolean;
  /** Live progress of a running operation's stages, by stage name; empty once it ended. */
  progress(id: string): ReadonlyMap<string, StageProgress>;
  /** At start-up: operations a restart cut off become failed (INTERRUPTED). */
  recover(): Promise<OperationRecord[]>;
  /** Resolves when every running operation has ended (tests, shutdown). */
  settled(): Promise<void>;
}

/**
 * Marks `error` with the last output of the VM it concerns (console, VMM log;
 * bounded by whoever made it): the failed operation keeps it as its error's
 * `vmmLogTail`, which outlives the VM's files.
 */
export function withLogTail<E extends Error>(error: E, logTail: string): E {
  return Object.assign(error, { logTail });
}

export function createOperations(deps: {
  readonly db: Kysely<Database>;
  readonly logger: Logger;
  readonly now?: () => Date;
  /**
   * Failure injection for tests (test/support/orchestrator-with-faults.mjs): a stage of one of
   * these names fails right after its work succeeded, the hardest moment to
   * unwind from (what it made exists, its own undo was never registered).
   */
  readonly failAfterStages?: ReadonlySet<string>;
  /**
   * Delay injection for tests: a stage of one of these names waits this many ms before its work, and a
   * cancel does not cut the wait short (a step under way that stops only at its end).
   */
  readonly delayStages?: ReadonlyMap<string, number>;
}): Operations {
  const { db, logger } = deps;
  const now = deps.now ?? (() => new Date());
  const live = new Map<string, Live>();
  const notify = (id: string) => {
    for (const listener of live.get(id)?.listeners ?? []) listener();
  };

  const get = async (id: string) => {
    const found = await getOperation(db, id);
    if (!found) throw new NotFoundError(`operation ${id} does not exist`, { reason: "OPERATION_NOT_FOUND" });
    return found;
  };

  /** Runs `work` to its end and records how it ended; never rejects. */
  async function run(
    state: RunState,
    kind: OperationKind,
    target: string,
    work: (op: OperationContext) => Promise<OperationResult | null>,
  ): Promise<void> {
    const { id, controller } = state;
    const save = async (patch: Omit<OperationPatch, "updatedAt">) => {
      await updateOperation(db, id, { ...patch, updatedAt: now() });
      notify(id);
    };
    const context = createContext(state, {
      logger,
      now,
      saveStages: () => save({ stages: state.stages }),
      notify: () => notify(id),
      failAfterStages: deps.failAfterStages,
      delayStages: deps.delayStages,
    });
    try {
      const result = await work(context);
      await save({ state: "succeeded", result });
      logger.info({ operation: kind, target }, "operation succeeded");
    } catch (error) {
      const cancelled = controller.signal.aborted;
      const { failure, stages } = failureOf(id, error, cancelled, state.stages, now);
      state.stages = stages;
      await save({ state: cancelled ? "cancelled" : "failed", error: failure, stages }).catch((saveError: unknown) =>
        logger.error({ err: saveError }, "could not record the end of an operation"),
      );
      logger.warn(
        { operation: kind, target, code: failure.code, reason: failure.reason, err: error },
        "operation failed",
      );
    } finally {
      clearTimeout(state.progressTimer);
      notify(id);
      live.delete(id);
    }
  }

  return {
    async start(kind, target, work) {
      const id = currentOpId() ?? mintOpId();
      const record = await insertOperation(db, { id, kind, target, state: "running", createdAt: now() });
      const state: RunState = {
        id,
        controller: new AbortController(),
        progress: new Map<string, StageProgress>(),
        stages: [],
        progressTimer: undefined,
      };
      const done = run(state, kind, target, work);
      live.set(id, { controller: state.controller, listeners: new Set(), done, progress: state.progress });
      return record;
    },

    get,
    list: (filter) => listOperations(db, filter),

    async cancel(id) {
      const running = live.get(id);
      running?.controller.abort();
      return { operation: await get(id), cancelRequested: running !== undefined };
    },

    watch: (id, signal) => watchOperation(live, get, id, signal),

    async recover() {
      const interrupted = await markInterrupted(db, now());
      for (const op of interrupted) {
        logger.warn(
          { op_id: op.id, operation: op.kind, target: op.target, stage: op.error?.stage },
          "operation interrupted by a restart",
        );
      }
      return interrupted;
    },

    progress: (id) => live.get(id)?.progress ?? new Map<string, StageProgress>(),
    cancelRequested: (id) => live.get(id)?.controller.signal.aborted ?? false,

    async settled() {
      await Promise.all([...live.values()].map((entry) => entry.done));
    },
  };
}
