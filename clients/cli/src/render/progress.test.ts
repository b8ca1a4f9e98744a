import { create } from "@bufbuild/protobuf";
import { OperationSchema, OperationState, StageState, type Operation } from "@banger/gen/banger/v1/operation_pb.js";
import { describe, expect, it } from "vitest";
import { createProgressRenderer } from "./progress.js";

const MiB = 1048576n;

function pullAt(layerStates: [bigint, string][], layersState = StageState.RUNNING): Operation {
  const items = layerStates.map(([done, state], i) => ({
    id: `sha256:${String(i).repeat(64)}`,
    doneBytes: done * MiB,
    totalBytes: 10n * MiB,
    state,
  }));
  return create(OperationSchema, {
    id: "op-0123456789ab",
    state: OperationState.RUNNING,
    stages: [
      { name: "resolve", state: StageState.DONE, elapsed: { seconds: 0n, nanos: 200_000_000 } },
      {
        name: "layers",
        state: layersState,
        progress: {
          doneBytes: items.reduce((sum, item) => sum + item.doneBytes, 0n),
          totalBytes: BigInt(items.length) * 10n * MiB,
          items,
        },
      },
    ],
  });
}

describe("operation progress", () => {
  it("on a terminal, draws a bar per layer and a total, redrawn in place", () => {
    let screen = "";
    const renderer = createProgressRenderer({ write: (text) => (screen += text), isTTY: true, columns: 100 });
    renderer.update(
      pullAt([
        [0n, "waiting"],
        [0n, "waiting"],
      ]),
    );
    const first = screen;
    expect(first).toContain("  resolve      done (0.2 s)\n");
    expect(first).toMatch(/0000000000{2} \[-{24}\] 0\.0\/10\.0 MiB waiting\n/);
    expect(first).toMatch(/total {8}\[-{24}\] 0\.0\/20\.0 MiB\n$/);

    screen = "";
    renderer.update(
      pullAt([
        [5n, "downloading"],
        [10n, "downloaded"],
      ]),
    );
    // Up over the three bar lines, clear, then the new bars (stage lines are not repeated).
    expect(screen.startsWith("\x1b[3A\x1b[J")).toBe(true);
    expect(screen).not.toContain("resolve");
    expect(screen).toMatch(/\[#{12}-{12}\] 5\.0\/10\.0 MiB downloading/);
    expect(screen).toMatch(/\[#{24}\] 10\.0\/10\.0 MiB downloaded/);
    expect(screen).toMatch(/total {8}\[#{18}-{6}\] 15\.0\/20\.0 MiB\n$/);

    screen = "";
    renderer.update(
      pullAt(
        [
          [10n, "applied"],
          [10n, "applied"],
        ],
        StageState.DONE,
      ),
    );
    expect(screen).toMatch(/^\x1b\[3A\x1b\[J {2}layers {7}done/); // bars gone once the stage ended
    renderer.finish();
  });

  it("elsewhere, prints plain lines: one per stage change and one per layer once its bytes are in", () => {
    let text = "";
    const renderer = createProgressRenderer({ write: (t) => (text += t), isTTY: false, columns: 0 });
    renderer.update(
      pullAt([
        [0n, "waiting"],
        [3n, "downloading"],
      ]),
    );
    renderer.update(
      pullAt([
        [10n, "cached"],
        [6n, "downloading"],
      ]),
    );
    renderer.update(
      pullAt([
        [10n, "applied"],
        [10n, "downloaded"],
      ]),
    );
    renderer.update(
      pullAt(
        [
          [10n, "applied"],
          [10n, "applied"],
        ],
        StageState.DONE,
      ),
    );
    renderer.finish();
    expect(text).not.toContain("\x1b");
    expect(text.split("\n")).toEqual([
      "  resolve      done (0.2 s)",
      "  layers       …",
      `    layer 1/2 ${"0".repeat(12)} 10.0 MiB cached`,
      `    layer 2/2 ${"1".repeat(12)} 10.0 MiB downloaded`,
      expect.stringMatching(/^ {2}layers {7}done/),
      "",
    ]);
  });
});
