import { getHeapSpaceStatistics, getHeapStatistics, setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createIdleCollector, IDLE_GC_BETWEEN_MS, IDLE_GC_MIN_GROWTH, IDLE_GC_QUIET_MS } from "./idle-gc.js";

describe("idle collector (scripted clock)", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  /** A collector over a gc that records when it ran, in ms since the test began, and a heap that grows when told. */
  function setup() {
    const began = Date.now();
    const collections: number[] = [];
    let heap = 20e6;
    const idle = createIdleCollector({ gc: () => collections.push(Date.now() - began), heapSize: () => heap });
    return { idle, collections, grow: (bytes = IDLE_GC_MIN_GROWTH) => (heap += bytes) };
  }

  it("after start-up, collects twice once quiet, the second over V8's 5 s window after the first, then never again", () => {
    const { idle, collections } = setup();
    vi.advanceTimersByTime(IDLE_GC_QUIET_MS - 1);
    expect(collections).toEqual([]);
    vi.advanceTimersByTime(10 * 60_000);
    expect(collections).toEqual([IDLE_GC_QUIET_MS, IDLE_GC_QUIET_MS + IDLE_GC_BETWEEN_MS]);
    expect(IDLE_GC_BETWEEN_MS).toBeGreaterThan(5_000);
    idle.stop();
  });

  it("collects again after the next burst of calls, counting the quiet from the last call's end", () => {
    const { idle, collections, grow } = setup();
    vi.advanceTimersByTime(60_000);
    collections.length = 0;
    grow();
    for (let i = 0; i < 100; i++) {
      const end = idle.started();
      vi.advanceTimersByTime(10);
      end();
    }
    vi.advanceTimersByTime(IDLE_GC_QUIET_MS - 1);
    expect(collections).toEqual([]);
    vi.advanceTimersByTime(60_000);
    expect(collections).toEqual([61_000 + IDLE_GC_QUIET_MS, 61_000 + IDLE_GC_QUIET_MS + IDLE_GC_BETWEEN_MS]);
    idle.stop();
  });

  it("collects nothing after calls that grew the heap less than 8 MB: a few calls keep their optimized code", () => {
    const { idle, collections, grow } = setup();
    vi.advanceTimersByTime(60_000);
    collections.length = 0;
    grow(IDLE_GC_MIN_GROWTH - 1);
    idle.started()();
    vi.advanceTimersByTime(5 * 60_000);
    expect(collections).toEqual([]);
    idle.stop();
  });

  it("never collects while a call is in flight (a stream open for minutes), however long it has been since one started", () => {
    const { idle, collections, grow } = setup();
    vi.advanceTimersByTime(60_000);
    collections.length = 0;
    grow();
    const end = idle.started();
    vi.advanceTimersByTime(5 * 60_000);
    expect(collections).toEqual([]);
    end();
    vi.advanceTimersByTime(2 * 60_000);
    expect(collections).toHaveLength(2);
    expect(collections[0]).toBeGreaterThanOrEqual(6 * 60_000 + IDLE_GC_QUIET_MS);
    idle.stop();
  });

  it("a call between the two collections starts the count over: two more, the first once quiet again", () => {
    const { idle, collections } = setup();
    vi.advanceTimersByTime(IDLE_GC_QUIET_MS);
    expect(collections).toEqual([IDLE_GC_QUIET_MS]);
    vi.advanceTimersByTime(1_000);
    idle.started()();
    vi.advanceTimersByTime(2 * 60_000);
    const first = Math.max(IDLE_GC_QUIET_MS + IDLE_GC_BETWEEN_MS, IDLE_GC_QUIET_MS + 1_000 + IDLE_GC_QUIET_MS);
    // The pair never finished, so all of the heap counts as growth: two collections again.
    expect(collections).toEqual([IDLE_GC_QUIET_MS, first, first + IDLE_GC_BETWEEN_MS]);
    idle.stop();
  });

  it("an end called twice counts once; a stopped collector collects nothing", () => {
    const { idle, collections } = setup();
    const first = idle.started();
    const second = idle.started();
    first();
    first();
    vi.advanceTimersByTime(60_000);
    expect(collections).toEqual([]);
    second();
    idle.stop();
    vi.advanceTimersByTime(60_000);
    expect(collections).toEqual([]);
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe("idle collector (this V8)", () => {
  it("gives back the young generation a burst grew, which V8 alone keeps", async () => {
    // gc() as `node --expose-gc` gives it, in this test's process.
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    const newSpace = () => getHeapSpaceStatistics().find((s) => s.space_name === "new_space")?.space_size ?? 0;
    // A burst of short-lived objects, a few surviving a scavenge, as calls make: the young generation grows.
    let survivors: object[] = [];
    for (let i = 0; i < 2_000_000; i++) {
      survivors.push({ i, name: `call ${i}` });
      if (survivors.length > 50_000) survivors = [];
    }
    survivors = [];
    const grown = newSpace();
    expect(grown).toBeGreaterThan(8e6);
    const idle = createIdleCollector({ gc, quietMs: 200, heapSize: () => getHeapStatistics().total_heap_size });
    await new Promise((r) => setTimeout(r, 200 + IDLE_GC_BETWEEN_MS + 500));
    idle.stop();
    expect(newSpace()).toBeLessThan(grown / 4);
  }, 20_000);
});
