/**
 * What the work of an operation holds: its stages (recorded as they run, with
 * their durations, in the record and the log), notes, and live progress.
 */
import { CancelledError, InternalError, type Logger } from "@banger/common";
import type { OperationStage } from "../../store/index.js";
import type { OperationContext, StageProgress } from "../operations.js";

/** Watchers hear of progress at most this often per operation. */
const PROGRESS_INTERVAL_MS = 200;

/** One running operation's state, shared by its context, its end and its watchers. */
export interface RunState {
  readonly id: string;
  readonly controller: AbortController;
  readonly progress: Map<string, StageProgress>;
  /** Its stages so far, in order (replaced, never mutated in place). */
  stages: OperationStage[];
  progressTimer: NodeJS.Timeout | undefined;
}

export interface ContextDeps {
  readonly logger: Logger;
  readonly now: () => Date;
  /** Stores the stages as they are now and tells the watchers. */
  readonly saveStages: () => Promise<void>;
  /** Tells the watchers (progress, which is not stored). */
  readonly notify: () => void;
  /** Failure injection for tests: a stage of one of these names fails right after its work succeeded. */
  readonly failAfterStages: ReadonlySet<string> | undefined;
  /** Delay injection for tests: a stage of one of these names waits this many ms before its work. */
  readonly delayStages?: ReadonlyMap<string, number> | undefined;
}

/** `stage` in its place in the list (where it first appeared), or at the end when it is new. */
export function placeStage(stages: OperationStage[], stage: OperationStage): OperationStage[] {
  return stages.some((s) => s.name === stage.name)
    ? stages.map((s) => (s.name === stage.name ? stage : s))
    : [...stages, stage];
}

export function createContext(run: RunState, deps: ContextDeps): OperationContext {
  const { logger, now, saveStages } = deps;
  const tracked = new Map<string, { started: Date; t0: number }>();
  const setStage = (stage: OperationStage) => {
    run.stages = placeStage(run.stages, stage);
  };
  return {
    id: run.id,
    signal: run.controller.signal,
    progress(stage, value) {
      run.progress.set(stage, value);
      run.progressTimer ??= setTimeout(() => {
        run.progressTimer = undefined;
        deps.notify();
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
      await saveStages();
    },
    async note(name, message) {
      run.stages = run.stages.map((s) => (s.name === name ? { ...s, message } : s));
      logger.info({ stage: name, note: message }, "stage note");
      await saveStages();
    },
    stage: (name, work) => runStage(run, deps, name, work),
  };
}

/** Runs one stage: recorded as running, then done or failed, with its duration, in the record and the log. */
async function runStage<T>(run: RunState, deps: ContextDeps, name: string, work: () => Promise<T>): Promise<T> {
  const { logger, now, saveStages } = deps;
  if (run.controller.signal.aborted)
    throw new CancelledError(`operation ${run.id} was cancelled`, { reason: "CANCELLED" });
  const started = now();
  const t0 = performance.now();
  const set = (state: OperationStage["state"], endedAt: Date | null) => {
    // A note the work left on its stage (track() with a message) stays when the stage ends.
    const message = state === "running" ? "" : (run.stages.find((s) => s.name === name)?.message ?? "");
    run.stages = placeStage(run.stages, { name, state, startedAt: started, endedAt, message });
  };
  set("running", null);
  await saveStages();
  try {
    const delay = deps.delayStages?.get(name);
    if (delay !== undefined) await new Promise((resolve) => setTimeout(resolve, delay));
    const value = await work();
    if (deps.failAfterStages?.has(name)) {
      throw new InternalError(`injected failure after stage ${name}`, {
        reason: "INJECTED_FAILURE",
      });
    }
    set("done", now());
    await saveStages();
    logger.info({ stage: name, duration_ms: Math.round(performance.now() - t0) }, "stage completed");
    return value;
  } catch (error) {
    set("failed", now());
    await saveStages();
    logger.warn({ stage: name, duration_ms: Math.round(performance.now() - t0), error: String(error) }, "stage failed");
    throw Object.assign(error instanceof Error ? error : new Error(String(error)), { failedStage: name });
  }
}
