/** The image and op commands through the real three services. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startCluster, type Cluster } from "./harness.js";

let cluster: Cluster;
beforeAll(async () => {
  cluster = await startCluster();
});
afterAll(async () => {
  await cluster.shutdown();
});

describe("banger image and op", () => {
  it("list, show and delete images; a pull is an operation that op list/show/watch can find", async () => {
    expect(JSON.parse((await cluster.cli(["image", "list", "--json"])).stdout)).toEqual([]);

    const missing = await cluster.cli(["image", "show", "nope"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^banger: image nope does not exist \(op-[0-9a-f]{12}\)\n$/);
    const deleted = await cluster.cli(["image", "delete", "nope"]);
    expect([deleted.code, deleted.stderr]).toEqual([0, "no image nope: nothing to delete\n"]);

    // The puller does not build images yet: the pull operation starts, then fails with the puller's answer.
    const pull = await cluster.cli(["image", "pull", "alpine"]);
    const opId = /\((op-[0-9a-f]{12})\)/.exec(pull.stderr)?.[1] ?? "";
    expect(pull.stderr).toContain(`pulling alpine as alpine (${opId})`);
    expect(pull.code).toBe(1);
    expect(pull.stderr).toContain(
      `banger: failed: banger.imagepuller.v1.PullerService/Pull is not implemented yet (${opId})`,
    );

    const shown = JSON.parse((await cluster.cli(["op", "show", opId, "--json"])).stdout) as Record<string, unknown>;
    expect(shown).toMatchObject({
      id: opId,
      kind: "OPERATION_KIND_PULL_IMAGE",
      state: "OPERATION_STATE_FAILED",
      target: "alpine",
    });
    const listed = await cluster.cli(["op", "list"]);
    expect(listed.stdout).toMatch(new RegExp(`${opId}\\s+alpine\\s+failed`));
    const watched = await cluster.cli(["op", "watch", opId]);
    expect(watched.code).toBe(1);
    // Every line of that pull, in every service, carries its op id.
    expect(cluster.linesWithOpId(opId).map((l) => l["service"])).toEqual(
      expect.arrayContaining(["orchestrator", "image-puller"]),
    );
  });
});
