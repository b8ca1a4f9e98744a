import { join } from "node:path";
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from "@banger/common";
import { describe, expect, it } from "vitest";
import { openStore } from "./database.js";
import {
  getOperation,
  insertOperation,
  listOperations,
  markInterrupted,
  type OperationStage,
  updateOperation,
} from "./operation-repository.js";
import type { OperationResult } from "./operation-result.js";
import { T0, at, expectRefused, rejectionOf, useStore, useTempDir } from "../../test-support/store.js";

/** What a create left: the VM running. */
const box: Extract<OperationResult, { kind: "vm" }> = {
  kind: "vm",
  vm: {
    id: "3f2a9c1e7b4d",
    name: "box",
    imageName: "debian",
    kernelName: "k",
    vcpu: 2,
    memoryMib: 1024,
    workDiskMib: 8192,
    guestIp: "172.30.0.2",
    mac: "06:00:ac:1e:00:02",
    vsockCid: 3,
    nat: true,
    vmm: "firecracker",
    rootDiskStrategy: "clone",
    lastError: null,
    pendingChanges: { vcpu: 4 },
    createdAt: T0,
    startedAt: at(3),
    state: "running",
    pid: 4242,
    agentHealth: "ok",
    agentVersion: "8.1.3",
    publishedPorts: [{ hostIp: "0.0.0.0", hostPort: 8080, guestPort: 80, protocol: "tcp" }],
  },
};

const stage = (name: string, state: OperationStage["state"], startedAt: Date | null = null): OperationStage => ({
  name,
  state,
  startedAt,
  endedAt: state === "done" && startedAt ? at(2) : null,
  message: "",
});

describe("operation repository", () => {
  const store = useStore();
  const db = () => store().db;

  it("stores an operation and follows it to its end", async () => {
    const created = await insertOperation(db(), {
      id: "op-3f9a2c01b7de",
      kind: "create-vm",
      target: "box",
      stages: [stage("resolve-image", "pending"), stage("reserve", "pending")],
      createdAt: T0,
    });
    expect(created).toEqual({
      id: "op-3f9a2c01b7de",
      kind: "create-vm",
      state: "pending",
      target: "box",
      stages: [stage("resolve-image", "pending"), stage("reserve", "pending")],
      result: null,
      error: null,
      createdAt: T0,
      updatedAt: T0,
      endedAt: null,
    });

    const running = await updateOperation(db(), "op-3f9a2c01b7de", {
      updatedAt: at(1),
      state: "running",
      stages: [
        { name: "resolve-image", state: "done", startedAt: at(0), endedAt: at(1), message: "debian is local" },
        stage("reserve", "running", at(1)),
      ],
    });
    expect(running).toMatchObject({ state: "running", updatedAt: at(1), endedAt: null });
    expect(running.stages[0]).toEqual({
      name: "resolve-image",
      state: "done",
      startedAt: at(0),
      endedAt: at(1),
      message: "debian is local",
    });

    const done = await updateOperation(db(), "op-3f9a2c01b7de", {
      updatedAt: at(9),
      state: "succeeded",
      result: box,
    });
    expect(done).toMatchObject({ state: "succeeded", endedAt: at(9), result: box });
    expect(await getOperation(db(), "op-3f9a2c01b7de")).toEqual(done);
    expect(await getOperation(db(), "op-000000000000")).toBeUndefined();
  });

  it("gives back each kind of result as it was stored", async () => {
    const results: OperationResult[] = [
      box,
      {
        kind: "vm",
        vm: {
          ...box.vm,
          state: "stopped",
          pid: 0,
          agentHealth: "",
          agentVersion: "",
          startedAt: null,
          lastError: "boom",
        },
      },
      {
        kind: "image",
        image: {
          name: "golden",
          reference: null,
          manifestDigest: null,
          platform: "linux/amd64",
          rootfsBytes: 2 ** 33,
          workSeedBytes: 1024,
          defaultKernel: "k",
          source: "promoted",
          config: { entrypoint: ["/init"], cmd: [], env: ["A=1"], user: "app", workingDir: "/srv" },
          createdAt: T0,
        },
      },
      {
        kind: "kernel",
        kernel: {
          name: "k",
          version: "6.1.0",
          kernelSha256: `sha256:${"c".repeat(64)}`,
          kernelBytes: 8_000_000,
          uncompressed: true,
          initrdBytes: 0,
          hasModules: false,
          isDefault: true,
          createdAt: T0,
          usedBy: ["image:golden", "vm:box"],
        },
      },
    ];
    for (const [i, result] of results.entries()) {
      const id = `op-00000000a${i.toString(16).padStart(3, "0")}`;
      await insertOperation(db(), { id, kind: "create-vm", target: "box", createdAt: T0 });
      await updateOperation(db(), id, { updatedAt: at(1), state: "succeeded", result });
      expect((await getOperation(db(), id))?.result).toEqual(result);
    }
  });

  it("keeps a failure with every detail", async () => {
    await insertOperation(db(), { id: "op-000000000001", kind: "pull-image", target: "debian", createdAt: T0 });
    const failed = await updateOperation(db(), "op-000000000001", {
      updatedAt: at(3),
      state: "failed",
      error: {
        code: "unavailable",
        reason: "PULLER_UNAVAILABLE",
        message: "image puller is not running",
        stage: "fetch",
        peerCall: "banger.imagepuller.v1.PullerService/Pull",
      },
    });
    expect(failed.endedAt).toEqual(at(3));
    expect((await getOperation(db(), "op-000000000001"))?.error).toEqual({
      code: "unavailable",
      reason: "PULLER_UNAVAILABLE",
      message: "image puller is not running",
      stage: "fetch",
      peerCall: "banger.imagepuller.v1.PullerService/Pull",
    });
  });

  it("refuses a second operation with the same id: OPERATION_ID_TAKEN", async () => {
    await insertOperation(db(), { id: "op-000000000001", kind: "pull-image", target: "debian", createdAt: T0 });
    await expectRefused(
      db(),
      () => insertOperation(db(), { id: "op-000000000001", kind: "create-vm", target: "box", createdAt: at(1) }),
      AlreadyExistsError,
      "OPERATION_ID_TAKEN",
    );
  });

  it("refuses to update an operation that does not exist: OPERATION_NOT_FOUND", async () => {
    await expectRefused(
      db(),
      () => updateOperation(db(), "op-000000000009", { updatedAt: at(1), state: "running" }),
      NotFoundError,
      "OPERATION_NOT_FOUND",
    );
  });

  describe("listOperations", () => {
    const seed = async () => {
      // Inserted out of time order; two share a creation time.
      await insertOperation(db(), { id: "op-00000000000a", kind: "pull-image", target: "debian", createdAt: at(10) });
      await insertOperation(db(), { id: "op-00000000000b", kind: "create-vm", target: "box", createdAt: at(30) });
      await insertOperation(db(), { id: "op-00000000000c", kind: "create-vm", target: "dev", createdAt: at(20) });
      await insertOperation(db(), { id: "op-00000000000d", kind: "stop-vm", target: "box", createdAt: at(40) });
      await insertOperation(db(), { id: "op-00000000000e", kind: "start-vm", target: "box", createdAt: at(40) });
      await updateOperation(db(), "op-00000000000a", { updatedAt: at(15), state: "succeeded" });
      await updateOperation(db(), "op-00000000000d", { updatedAt: at(41), state: "cancelled" });
      await updateOperation(db(), "op-00000000000c", { updatedAt: at(21), state: "running" });
    };
    const ids = async (filter: Parameters<typeof listOperations>[1]) =>
      (await listOperations(db(), filter)).map((operation) => operation.id.slice(-1));

    it("lists newest first, the later inserted first among equals, up to the limit", async () => {
      await seed();
      expect(await ids({ limit: 50 })).toEqual(["e", "d", "b", "c", "a"]);
      expect(await ids({ limit: 2 })).toEqual(["e", "d"]);
    });

    it("filters by target, kind and activity, alone and together", async () => {
      await seed();
      expect(await ids({ target: "box", limit: 50 })).toEqual(["e", "d", "b"]);
      expect(await ids({ kind: "create-vm", limit: 50 })).toEqual(["b", "c"]);
      expect(await ids({ activeOnly: true, limit: 50 })).toEqual(["e", "b", "c"]);
      expect(await ids({ target: "box", activeOnly: true, limit: 50 })).toEqual(["e", "b"]);
      expect(await ids({ target: "box", kind: "stop-vm", limit: 50 })).toEqual(["d"]);
      expect(await ids({ target: "box", kind: "pull-image", limit: 50 })).toEqual([]);
      expect(await ids({ target: undefined, kind: undefined, activeOnly: false, limit: 1 })).toEqual(["e"]);
    });

    it("refuses a limit that is not a positive integer", async () => {
      for (const limit of [0, -1, 1.5]) {
        const error = await rejectionOf(listOperations(db(), { limit }), InvalidArgumentError);
        expect(error.reason).toBe("INVALID_LIMIT");
      }
    });
  });

  describe("markInterrupted", () => {
    it("fails every operation that had not ended, naming the stage it was in, and leaves ended ones alone", async () => {
      await insertOperation(db(), {
        id: "op-000000000001",
        kind: "create-vm",
        target: "box",
        state: "running",
        stages: [stage("reserve", "done", at(0)), stage("root-disk", "running", at(2)), stage("wait-ssh", "pending")],
        createdAt: T0,
      });
      await insertOperation(db(), { id: "op-000000000002", kind: "pull-image", target: "debian", createdAt: at(1) });
      await insertOperation(db(), { id: "op-000000000003", kind: "stop-vm", target: "dev", createdAt: at(1) });
      const ended = await updateOperation(db(), "op-000000000003", { updatedAt: at(2), state: "succeeded" });

      const now = at(100);
      const interrupted = await markInterrupted(db(), now);
      expect(interrupted.map((operation) => operation.id)).toEqual(["op-000000000001", "op-000000000002"]);

      expect(await getOperation(db(), "op-000000000001")).toMatchObject({
        state: "failed",
        updatedAt: now,
        endedAt: now,
        error: {
          code: "aborted",
          reason: "INTERRUPTED",
          message: "cut off by an orchestrator restart",
          stage: "root-disk",
        },
        stages: [
          stage("reserve", "done", at(0)),
          { name: "root-disk", state: "failed", startedAt: at(2), endedAt: now, message: "" },
          stage("wait-ssh", "pending"),
        ],
      });
      expect(await getOperation(db(), "op-000000000002")).toEqual(
        expect.objectContaining({
          state: "failed",
          endedAt: now,
          error: { code: "aborted", reason: "INTERRUPTED", message: "cut off by an orchestrator restart" },
        }),
      );
      expect(await getOperation(db(), "op-000000000003")).toEqual(ended);
      expect(await listOperations(db(), { activeOnly: true, limit: 50 })).toEqual([]);
      // A second start-up finds nothing more to do.
      expect(await markInterrupted(db(), at(200))).toEqual([]);
    });
  });
});

describe("operations across a restart", () => {
  const dir = useTempDir();

  it("are still there after the orchestrator restarts; the one cut off is marked INTERRUPTED", async () => {
    const path = join(dir(), "state.db");
    const before = await openStore(path);
    await insertOperation(before.db, {
      id: "op-00000000beef",
      kind: "pull-image",
      target: "debian",
      state: "running",
      createdAt: T0,
    });
    await insertOperation(before.db, { id: "op-00000000cafe", kind: "create-vm", target: "box", createdAt: T0 });
    await updateOperation(before.db, "op-00000000cafe", {
      updatedAt: at(5),
      state: "succeeded",
      result: box,
    });
    await before.close();

    const after = await openStore(path);
    try {
      await markInterrupted(after.db, at(60));
      expect(await getOperation(after.db, "op-00000000beef")).toMatchObject({
        state: "failed",
        error: { reason: "INTERRUPTED" },
        endedAt: at(60),
      });
      expect(await getOperation(after.db, "op-00000000cafe")).toMatchObject({
        state: "succeeded",
        result: box,
      });
    } finally {
      await after.close();
    }
  });
});
