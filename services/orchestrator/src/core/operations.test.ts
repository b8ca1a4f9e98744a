import { Writable } from "node:stream";
import { join } from "node:path";
import { FailedPreconditionError, createLogger, runWithOpId } from "@banger/common";
import { describe, expect, it } from "vitest";
import { EMPTY_IMAGE_CONFIG, openStore, type OperationRecord, type OperationResult } from "../store/index.js";
import { useTempDir } from "../../test-support/store.js";
import { createOperations } from "./operations.js";

const tempDir = useTempDir();

function setup() {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger({
    service: "orchestrator",
    destination: new Writable({
      write(chunk: Buffer, _e, done) {
        for (const l of chunk.toString().split("\n").filter(Boolean))
          lines.push(JSON.parse(l) as Record<string, unknown>);
        done();
      },
    }),
  });
  return { lines, logger, path: join(tempDir(), "banger.db") };
}

/** A promise and its resolve, to hold work in a stage until the test lets it go. */
function gate() {
  let open = () => {};
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

async function collect(iterable: AsyncIterable<OperationRecord>): Promise<OperationRecord[]> {
  const seen: OperationRecord[] = [];
  for await (const op of iterable) seen.push(op);
  return seen;
}

/** What a pull left. */
const debian: OperationResult = {
  kind: "image",
  image: {
    name: "debian",
    reference: "docker.io/library/debian:bookworm",
    manifestDigest: `sha256:${"a".repeat(64)}`,
    platform: "linux/amd64",
    rootfsBytes: 1 << 30,
    workSeedBytes: 0,
    defaultKernel: null,
    source: "pulled",
    config: EMPTY_IMAGE_CONFIG,
    createdAt: new Date("2026-12-01T08:00:00.000Z"),
  },
};

describe("operations", () => {
  it("persist stages and the result; a watcher sees every stage and the end; the op id is the call's", async () => {
    const { logger, lines, path } = setup();
    const store = await openStore(path);
    const ops = createOperations({ db: store.db, logger });
    const hold = gate();
    const started = await runWithOpId("op-00000000abcd", () =>
      ops.start("pull-image", "debian", async (op) => {
        await op.stage("resolve", async () => {});
        await op.stage("layers", () => hold.promise);
        return debian;
      }),
    );
    expect(started).toMatchObject({ id: "op-00000000abcd", state: "running", kind: "pull-image", target: "debian" });
    const watching = collect(ops.watch(started.id, new AbortController().signal));
    setTimeout(hold.open, 50);
    const seen = await watching;
    const last = seen.at(-1);
    expect(last).toMatchObject({ state: "succeeded", result: debian });
    expect(last?.stages.map((s) => [s.name, s.state])).toEqual([
      ["resolve", "done"],
      ["layers", "done"],
    ]);
    expect(seen.some((op) => op.stages.some((s) => s.name === "layers" && s.state === "running"))).toBe(true);
    expect(await ops.get(started.id)).toEqual(last);
    const stageLines = lines.filter((l) => l["msg"] === "stage completed");
    expect(stageLines.map((l) => [l["stage"], l["op_id"]])).toEqual([
      ["resolve", "op-00000000abcd"],
      ["layers", "op-00000000abcd"],
    ]);
    await store.close();
  });

  it("ends failed with the failing stage, code and reason", async () => {
    const { logger, path } = setup();
    const store = await openStore(path);
    const ops = createOperations({ db: store.db, logger });
    const { id } = await ops.start("pull-image", "debian", async (op) => {
      await op.stage("resolve", () =>
        Promise.reject(new FailedPreconditionError("no such tag", { receivedReason: "MANIFEST_NOT_FOUND" })),
      );
      return null;
    });
    await ops.settled();
    expect(await ops.get(id)).toMatchObject({
      state: "failed",
      error: { code: "failed_precondition", reason: "MANIFEST_NOT_FOUND", message: "no such tag", stage: "resolve" },
    });
    await store.close();
  });

  it("cancels on request, not when a watcher goes away", async () => {
    const { logger, path } = setup();
    const store = await openStore(path);
    const ops = createOperations({ db: store.db, logger });
    const { id } = await ops.start("pull-image", "alpine", async (op) => {
      await op.stage(
        "layers",
        () => new Promise((_, reject) => op.signal.addEventListener("abort", () => reject(new Error("stopped")))),
      );
      return null;
    });
    const watcher = new AbortController();
    const watching = collect(ops.watch(id, watcher.signal));
    watcher.abort(); // the client closed: the operation goes on
    await watching;
    expect((await ops.get(id)).state).toBe("running");
    const { cancelRequested } = await ops.cancel(id);
    expect(cancelRequested).toBe(true);
    await ops.settled();
    expect(await ops.get(id)).toMatchObject({
      state: "cancelled",
      error: { code: "canceled", reason: "CANCELLED", stage: "layers" },
    });
    expect((await ops.cancel(id)).cancelRequested).toBe(false);
    await store.close();
  });

  it("after a restart, an operation that was running is failed INTERRUPTED and still answers", async () => {
    const { logger, path } = setup();
    const first = await openStore(path);
    const before = createOperations({ db: first.db, logger });
    const { id } = await before.start("create-vm", "box", async (op) => {
      await op.stage("root-disk", () => new Promise(() => {})); // never ends: the process "dies"
      return null;
    });
    await new Promise((r) => setTimeout(r, 50));
    await first.close();

    const second = await openStore(path);
    const after = createOperations({ db: second.db, logger });
    expect((await after.recover()).map((op) => op.id)).toEqual([id]);
    expect(await after.get(id)).toMatchObject({
      state: "failed",
      error: { reason: "INTERRUPTED", stage: "root-disk" },
    });
    await expect(after.get("op-000000000000")).rejects.toThrow(/does not exist/);
    await second.close();
  });
});
