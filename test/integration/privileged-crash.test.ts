/**
 * `kill -9` of the helper while it is creating taps, then a restart: every
 * link banger's batches made is marked and listed by the inventory, nothing
 * half-made hides from it, and deleting what it lists leaves the namespace
 * clean. Needs root.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HostService, LinkKind } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { NetworkService } from "@banger/gen/banger/privileged/v1/network_pb.js";
import { createClient } from "@connectrpc/connect";
import { requireTools } from "@banger/common/testing";
import { afterAll, describe, expect, it } from "vitest";
import { IS_ROOT, NETNS_TOOLS, createNetNs, startHelperInNs, type NetNs } from "./netns.js";

const OWNER = 1000;
let ns: NetNs | undefined;
let dir: string | undefined;

afterAll(() => {
  ns?.remove();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const RUNS = IS_ROOT && requireTools("the helper killed mid-work", NETNS_TOOLS).length === 0;

describe.skipIf(!RUNS)("the helper killed with SIGKILL mid-work", () => {
  it("restarts with an inventory that lists everything that remains, and cleans up from it", async () => {
    ns = createNetNs();
    dir = mkdtempSync(join(tmpdir(), "banger-crash-"));
    chmodSync(dir, 0o755);
    const runtimeDir = join(dir, "run");
    mkdirSync(runtimeDir);
    const first = await startHelperInNs(ns, runtimeDir, join(dir, "state"), OWNER);
    const network = createClient(NetworkService, first.transport.transport);
    await network.ensureBridge({ name: "bgr0", address: "172.30.0.1/24" });

    // Twenty creates in flight; the helper dies after the first few are done.
    const creates = Array.from({ length: 20 }, (_, i) =>
      network.createTap({ vmId: `crash-${i}`, bridge: "bgr0" }).then(
        () => "done",
        () => "cut off",
      ),
    );
    await creates[2];
    await first.stop("SIGKILL");
    const outcomes = await Promise.all(creates);
    expect(outcomes.filter((o) => o === "done").length).toBeGreaterThanOrEqual(1);

    const second = await startHelperInNs(ns, runtimeDir, join(dir, "state"), OWNER);
    const inventory = await createClient(HostService, second.transport.transport).getInventory({});
    const listed = inventory.links.map((l) => l.name).sort();
    const present = ns
      .links()
      .map((l) => l.ifname)
      .filter((name) => name.startsWith("bgr"))
      .sort();
    expect(listed).toEqual(present); // nothing of banger's is invisible to the inventory
    console.log(
      `after kill -9: ${outcomes.filter((o) => o === "done").length} creates answered, ${present.length - 1} taps present`,
    );

    const again = createClient(NetworkService, second.transport.transport);
    for (const link of inventory.links.filter((l) => l.kind === LinkKind.TAP)) {
      expect(await again.deleteTap({ vmId: link.vmId })).toMatchObject({ existed: true });
    }
    await again.deleteBridge({ name: "bgr0" });
    expect(ns.links().map((l) => l.ifname)).toEqual(["lo"]);
    await second.stop();
  });
});
