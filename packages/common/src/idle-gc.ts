/**
 * Gives a quiet service's memory back. V8 keeps what a burst of calls grew (a young generation of
 * up to 2 × 16 MB, old-space pages full of garbage) until its memory reducer runs, and the reducer
 * starts only after a full GC that finds the old generation ≥ 10 MB larger than at its last run:
 * after 800 calls bangerd kept 152 MB for a live heap of 16 MB, indefinitely. Node has no call for
 * V8's own memory-reducing GC, so once no call has been in flight for `quietMs` this runs `gc()`
 * (node --expose-gc, the units' flag) twice, `betweenMs` apart: the first frees the garbage, the
 * second, seeing the allocation rate of an idle process since the first, also shrinks the young
 * generation and compacts the old (V8 shrinks only when fewer than 1 MB/s were allocated over the
 * last 5 s, hence `betweenMs` > 5 s). Then nothing runs until the next call. bangerd: 152 → 85 MB.
 *
 * Not free: a full GC also drops the optimized code of closures no live object holds (V8 keeps it
 * weakly), so the first calls after it run colder: bangerd's GetStatus took 5.1 ms of CPU a call
 * over the next 500 instead of 2.5, 3.5 over the 500 after, the same again after ~1500. Hence a
 * quiet spell of 30 s (calls closer together keep their code), and no collection at all when the
 * heap grew less than `minGrowth` since the last one left it (a few CLI calls).
 */

/** Calls as the server sees them: each started one ends once, whatever its outcome. */
export interface CallTracker {
  /** A call has started; the returned function ends it. */
  started(): () => void;
}

export interface IdleCollector extends CallTracker {
  /** No more collections (the service is stopping). */
  stop(): void;
}

export interface IdleCollectorOptions {
  /** A full GC: `globalThis.gc` under `node --expose-gc`. */
  readonly gc: () => void;
  /** How long no call must have been in flight before the first collection. */
  readonly quietMs?: number;
  /** From the first collection to the second (over V8's 5 s window of allocation rate). */
  readonly betweenMs?: number;
  /** V8's heap as committed now, in bytes (`v8.getHeapStatistics().total_heap_size`). */
  readonly heapSize: () => number;
  /** Growth of the heap since the last collection left it below which a quiet spell collects nothing. */
  readonly minGrowth?: number;
}

export const IDLE_GC_QUIET_MS = 30_000;
export const IDLE_GC_BETWEEN_MS = 6_000;
export const IDLE_GC_MIN_GROWTH = 8e6;

/**
 * Collects twice after each quiet spell, including the one after start-up (loading the code is
 * a burst too). What a call costs: a clock read as it starts and ends, and a counter.
 */
export function createIdleCollector(options: IdleCollectorOptions): IdleCollector {
  const { gc, heapSize } = options;
  const quietMs = options.quietMs ?? IDLE_GC_QUIET_MS;
  const betweenMs = options.betweenMs ?? IDLE_GC_BETWEEN_MS;
  const minGrowth = options.minGrowth ?? IDLE_GC_MIN_GROWTH;

  let inFlight = 0;
  let lastActive = Date.now();
  /** Collections still to run before the service counts as settled: 2 after any call. */
  let pending = 2;
  /** The heap as the last collection left it (none yet: start-up's whole heap is growth). */
  let settledSize = 0;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;

  const schedule = (ms: number) => {
    timer = setTimeout(tick, ms);
    // A quiet service's timer must not keep it alive.
    timer.unref();
  };
  const tick = () => {
    timer = undefined;
    if (stopped || pending === 0) return;
    const quietFor = Date.now() - lastActive;
    if (inFlight > 0 || quietFor < quietMs) {
      schedule(inFlight > 0 ? quietMs : quietMs - quietFor);
      return;
    }
    if (pending === 2 && heapSize() - settledSize < minGrowth) {
      pending = 0;
      return;
    }
    gc();
    pending--;
    if (pending > 0) schedule(betweenMs);
    else settledSize = heapSize();
  };
  schedule(quietMs);

  return {
    started() {
      inFlight++;
      lastActive = Date.now();
      pending = 2;
      if (timer === undefined && !stopped) schedule(quietMs);
      let ended = false;
      return () => {
        if (ended) return;
        ended = true;
        inFlight--;
        lastActive = Date.now();
      };
    },
    stop() {
      stopped = true;
      clearTimeout(timer);
      timer = undefined;
    },
  };
}
