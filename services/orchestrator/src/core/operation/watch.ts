/** Watchers of an operation: woken at each change of a running one, until it ends or they go. */
import type { OperationRecord } from "../../store/index.js";
import type { StageProgress } from "../operations.js";

/** A running operation, as its watchers and cancel see it. */
export interface Live {
  readonly controller: AbortController;
  readonly listeners: Set<() => void>;
  readonly done: Promise<void>;
  readonly progress: Map<string, StageProgress>;
}

/** The operation now, then after every change, until it ends or `signal` aborts. */
export async function* watchOperation(
  live: ReadonlyMap<string, Live>,
  get: (id: string) => Promise<OperationRecord>,
  id: string,
  signal: AbortSignal,
): AsyncIterable<OperationRecord> {
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
