/**
 * Long work as operations: persisted (so GetOperation answers after a
 * restart), watched by any number of clients (closing one never cancels the
 * work), cancelled on request. The work runs detached from the RPC that began
 * it, in the op id context of that RPC, so every log line keeps its op id.
 */
import {
  CancelledError,
  InternalError,
  NotFoundError,
  codeName,
  currentOpId,
  mintOpId,
  statusOf,
  type Logger,
} from "@banger/common";
import type { Kysely } from "kysely";
import {
  getOperation,
  insertOperation,
  listOperations,
  markInterrupted,
  updateOperation,
  type Database,
  type OperationFailure,
  type OperationFilter,
  type OperationKind,
  type OperationRecord,
  type OperationResult,
  type OperationStage,
} from "../store/index.js";

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
  /** Live progress of a running operation's stages, by stage name; empty once it ended. */
  progress(id: string): ReadonlyMap<string, StageProgress>;
  /** At start-up: operations a restart cut off become failed (INTERRUPTED). */
  recover(): Promise<OperationRecord[]>;
  /** Resolves when every running operation has ended (tests, shutdown). */
  settled(): Promise<void>;
}

interface Live {
  readonly controller: AbortController;
  readonly listeners: Set<() => void>;
  readonly done: Promise<void>;
  readonly progress: Map<string, StageProgress>;
}

/**
 * Marks `error` with the last output of the VM it concerns (console, VMM log;
 * bounded by whoever made it): the failed operation keeps it as its error's
 * `vmmLogTail`, which outlives the VM's files.
 */
export function withLogTail<E extends Error>(error: E, logTail: string): E {
  return Object.assign(error, { logTail });
}

/** Watchers hear of progress at most this often per operation. */
const PROGRESS_INTERVAL_MS = 200;

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

  return {
    async start(kind, target, work) {
      const id = currentOpId() ?? mintOpId();
      const record = await insertOperation(db, { id, kind, target, state: "running", createdAt: now() });
      const controller = new AbortController();
      const listeners = new Set<() => void>();
      const progress = new Map<string, StageProgress>();
      let progressTimer: NodeJS.Timeout | undefined;
      let stages: OperationStage[] = [];
      const save = async (patch: Omit<Parameters<typeof updateOperation>[2], "updatedAt">) => {
        await updateOperation(db, id, { ...patch, updatedAt: now() });
        notify(id);
      };

      const tracked = new Map<string, { started: Date; t0: number }>();
      const setStage = (stage: OperationStage) => {
        stages = placeStage(stages, stage);
      };
      const context: OperationContext = {
        id,
        signal: controller.signal,
        progress(stage, value) {
          progress.set(stage, value);
          progressTimer ??= setTimeout(() => {
            progressTimer = undefined;
            notify(id);
          }, PROGRESS_INTERVAL_MS);
        },
        async track(name, state, message = "") {
          if (state === "running") {
            tracked.set(name, { started: now(), t0: performance.now() });
            setStage({ name, state, startedAt: now(), endedAt: null, message });
          } else {
            const begun = tracked.get(name) ?? { started: now(), t0: performance.now() };
            setStage({ name, state, startedAt: begun.started, endedAt: now(), message });
            logger.info({ stage: name, duration_ms: Math.round(performance.now() - begun.t0) }, "stage completed");
          }
          await save({ stages });
        },
        async note(name, message) {
          stages = stages.map((s) => (s.name === name ? { ...s, message } : s));
          logger.info({ stage: name, note: message }, "stage note");
          await save({ stages });
        },
        async stage(name, run) {
          if (controller.signal.aborted)
            throw new CancelledError(`operation ${id} was cancelled`, { reason: "CANCELLED" });
          const started = now();
          const t0 = performance.now();
          const set = (state: OperationStage["state"], endedAt: Date | null) => {
            // A note the work left on its stage (track() with a message) stays when the stage ends.
            const message = state === "running" ? "" : (stages.find((s) => s.name === name)?.message ?? "");
            stages = placeStage(stages, { name, state, startedAt: started, endedAt, message });
          };
          set("running", null);
          await save({ stages });
          try {
            const value = await run();
            if (deps.failAfterStages?.has(name)) {
              throw new InternalError(`injected failure after stage ${name}`, {
                reason: "INJECTED_FAILURE",
              });
            }
            set("done", now());
            await save({ stages });
            logger.info({ stage: name, duration_ms: Math.round(performance.now() - t0) }, "stage completed");
            return value;
          } catch (error) {
            set("failed", now());
            await save({ stages });
            logger.warn(
              { stage: name, duration_ms: Math.round(performance.now() - t0), error: String(error) },
              "stage failed",
            );
            throw Object.assign(error instanceof Error ? error : new Error(String(error)), { failedStage: name });
          }
        },
      };

      const done = (async () => {
        try {
          const result = await work(context);
          await save({ state: "succeeded", result });
          logger.info({ operation: kind, target }, "operation succeeded");
        } catch (error) {
          const cancelled = controller.signal.aborted;
          const status = statusOf(
            cancelled ? new CancelledError(`operation ${id} was cancelled`, { reason: "CANCELLED" }) : error,
          );
          // A stage another service was running when it failed is the failing stage.
          const running = stages.find((st) => st.state === "running");
          if (running) setStage({ ...running, state: "failed", endedAt: now() });
          const thrownStage = (error as { failedStage?: unknown }).failedStage;
          const failedStage = typeof thrownStage === "string" ? thrownStage : running?.name;
          const logTail = cancelled ? undefined : (error as { logTail?: unknown } | undefined)?.logTail;
          const failure: OperationFailure = {
            code: codeName(status.code),
            reason: status.reason,
            message: status.message,
            ...(typeof failedStage === "string" ? { stage: failedStage } : {}),
            ...(typeof logTail === "string" && logTail !== "" ? { vmmLogTail: logTail } : {}),
          };
          await save({ state: cancelled ? "cancelled" : "failed", error: failure, stages }).catch(
            (saveError: unknown) => logger.error({ err: saveError }, "could not record the end of an operation"),
          );
          logger.warn(
            { operation: kind, target, code: failure.code, reason: failure.reason, err: error },
            "operation failed",
          );
        } finally {
          clearTimeout(progressTimer);
          notify(id);
          live.delete(id);
        }
      })();
      live.set(id, { controller, listeners, done, progress });
      return record;
    },

    get,
    list: (filter) => listOperations(db, filter),

    async cancel(id) {
      const running = live.get(id);
      running?.controller.abort();
      return { operation: await get(id), cancelRequested: running !== undefined };
    },

    async *watch(id, signal) {
      let last = "";
      for (;;) {
        // Listen before reading, so a change between the read and the wait is not missed.
        const entry = live.get(id);
        const change = entry ? nextChange(entry, signal) : undefined;
        try {
          const current = await get(id);
          const seen = JSON.stringify([current, [...(live.get(id)?.progress ?? [])]]);
          if (seen !== last) {
            last = seen;
            yield current;
          }
          if (current.endedAt !== null || !change || signal.aborted) return;
          await change.promise;
          if (signal.aborted) return;
        } finally {
          change?.dispose();
        }
      }
    },

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

    async settled() {
      await Promise.all([...live.values()].map((entry) => entry.done));
    },
  };
}

/** `stage` in its place in the list (where it first appeared), or at the end when it is new. */
function placeStage(stages: OperationStage[], stage: OperationStage): OperationStage[] {
  return stages.some((s) => s.name === stage.name)
    ? stages.map((s) => (s.name === stage.name ? stage : s))
    : [...stages, stage];
}

/** Resolves at the entry's next change or when `signal` aborts; dispose() stops listening. */
function nextChange(entry: Live, signal: AbortSignal): { promise: Promise<void>; dispose: () => void } {
  let wake = () => {};
  const promise = new Promise<void>((resolve) => (wake = resolve));
  entry.listeners.add(wake);
  signal.addEventListener("abort", wake);
  return {
    promise,
    dispose: () => {
      entry.listeners.delete(wake);
      signal.removeEventListener("abort", wake);
    },
  };
}
