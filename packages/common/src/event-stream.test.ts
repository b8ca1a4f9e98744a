import { describe, expect, it } from "vitest";
import { eventStream } from "./event-stream.js";

async function drain<E, R>(stream: AsyncGenerator<E, R>): Promise<{ events: E[]; result: R }> {
  const events: E[] = [];
  for (;;) {
    const next = await stream.next();
    if (next.done) return { events, result: next.value };
    events.push(next.value);
  }
}

describe("eventStream", () => {
  it("yields events in order, then returns the work's result", async () => {
    const stream = eventStream<string, number>(async (emit) => {
      emit("a");
      await new Promise((r) => setTimeout(r, 5));
      emit("b");
      emit("c");
      return 42;
    });
    expect(await drain(stream)).toEqual({ events: ["a", "b", "c"], result: 42 });
  });

  it("lets a newer event replace a pending one the reader has not taken", async () => {
    const stream = eventStream<{ layer: string; done: number }, void>(
      (emit) => {
        for (let done = 1; done <= 100; done++) emit({ layer: "x", done });
        emit({ layer: "y", done: 1 });
        return Promise.resolve();
      },
      (pending, next) => pending.layer === next.layer,
    );
    expect((await drain(stream)).events).toEqual([
      { layer: "x", done: 100 },
      { layer: "y", done: 1 },
    ]);
  });

  it("throws the work's error after the events it emitted", async () => {
    const stream = eventStream<string, void>((emit) => {
      emit("started");
      return Promise.reject(new Error("broke"));
    });
    await expect(stream.next()).resolves.toEqual({ value: "started", done: false });
    await expect(stream.next()).rejects.toThrow("broke");
  });
});
