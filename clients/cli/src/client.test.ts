import type { UnaryRequest, UnaryResponse } from "@connectrpc/connect";
import { afterEach, describe, expect, it, vi } from "vitest";
import { parseDuration, slowAnswerHint } from "./client.js";

afterEach(() => {
  vi.useRealTimers();
});

describe("slowAnswerHint", () => {
  it("says once where to look when bangerd has not answered in 15 s, and nothing when it answers in time", async () => {
    vi.useFakeTimers();
    const said: string[] = [];
    const hint = slowAnswerHint("/run/banger/orchestrator.sock", (text) => said.push(text));
    let answer: (value: UnaryResponse) => void = () => undefined;
    const pending = new Promise<UnaryResponse>((resolve) => (answer = resolve));
    const call = hint(() => pending)({} as UnaryRequest);
    const second = hint(() => pending)({} as UnaryRequest);
    await vi.advanceTimersByTimeAsync(14_999);
    expect(said).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(said).toEqual([
      "banger: no answer from bangerd at /run/banger/orchestrator.sock for 15 s; still waiting " +
        "(installed: systemctl status bangerd.service, journalctl -u bangerd)\n",
    ]);
    answer({} as UnaryResponse);
    await Promise.all([call, second]);
    expect(said).toHaveLength(1); // once per command, however many calls wait

    const quick = slowAnswerHint("/s", (text) => said.push(text));
    await quick(() => Promise.resolve({} as UnaryResponse))({} as UnaryRequest);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(said).toHaveLength(1);
  });
});

describe("parseDuration", () => {
  it("reads ms, s, m and bare seconds; refuses anything else as a usage error", () => {
    expect(["500ms", "1s", "1.5s", "2m", "30"].map(parseDuration)).toEqual([500, 1000, 1500, 120_000, 30_000]);
    for (const bad of ["", "0", "soon", "1h", "-1s"]) expect(() => parseDuration(bad)).toThrow(/expected a duration/);
  });
});
