/**
 * Fault injection in the helper's multi-step network operations: the real ops
 * run against a throwaway network namespace with a runner that fails the
 * N-th changing command; after each failure nothing of the attempt remains.
 * Needs root.
 */
import { HostCommandError } from "@banger/common";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { helperConfig } from "../../services/privileged/src/config.js";
import { createHostRunner, type RunOptions, type Runner } from "@banger/common";
import { createNetworkOps, type NetworkOps } from "../../services/privileged/src/ops/network.js";
import { IS_ROOT, NETNS_TOOLS, createNetNs, type NetNs } from "./netns.js";

let ns: NetNs;
const real = createHostRunner();

/**
 * Runs every command inside the namespace; the `failAt`-th changing step fails
 * instead of running. Each line of an `ip -batch` counts as a step: the lines
 * before the failing one really run, as `ip` itself would have run them.
 */
function faultyRunner(failAt: number): { runner: Runner } {
  let changes = 0;
  const inNs = (argv: readonly string[], options?: RunOptions) =>
    real.run(["ip", "netns", "exec", ns.name, ...argv], options);
  const runner: Runner = {
    async run(argv, options) {
      if (argv[0] === "ip" && argv[1] === "-batch") {
        const lines = String(options?.stdin ?? "")
          .split("\n")
          .filter(Boolean);
        const failing = failAt - changes - 1;
        changes += lines.length;
        if (failing >= 0 && failing < lines.length) {
          if (failing > 0) await inNs(argv, { ...options, stdin: lines.slice(0, failing).join("\n") + "\n" });
          throw new HostCommandError(argv, 1, `injected failure at: ${lines[failing]}`);
        }
        return inNs(argv, options);
      }
      const reads = argv.includes("-j");
      if (!reads) {
        changes++;
        if (changes === failAt) throw new HostCommandError(argv, 2, "injected failure");
      }
      return inNs(argv, options);
    },
  };
  return { runner };
}

function ops(runner: Runner): NetworkOps {
  return createNetworkOps({
    runner,
    config: helperConfig({ ownerUid: 1000, ownerGid: 1000 }),
    resolvedPresent: () => false,
  });
}

function state(): string {
  const links = ns.links().map((l) => [l.ifname, l.ifalias ?? "", l.master ?? ""]);
  return JSON.stringify({ links, addrs: ns.exec(["ip", "-4", "-o", "addr"]), ruleset: ns.ruleset() });
}

const RUNS = IS_ROOT && requireTools("network faults after any step", NETNS_TOOLS).length === 0;

beforeAll(() => {
  if (RUNS) ns = createNetNs();
});
afterAll(() => {
  if (RUNS) ns.remove();
});

/** Runs `attempt` with a failure at each changing step in turn, until it succeeds; checks nothing leaked each time. */
async function injectEverywhere(
  prepare: () => Promise<void>,
  attempt: (o: NetworkOps) => Promise<unknown>,
  cleanup: () => Promise<void>,
) {
  await prepare();
  const before = state();
  let failed = 0;
  for (let step = 1; ; step++) {
    const { runner } = faultyRunner(step);
    try {
      await attempt(ops(runner));
    } catch (error) {
      expect(error).toBeInstanceOf(HostCommandError);
      expect((error as Error).message).toContain("injected failure");
      expect(state(), `after a failure at step ${step}`).toBe(before);
      failed++;
      continue;
    }
    break; // the attempt had fewer steps than `step`: it succeeded
  }
  await cleanup();
  return failed;
}

describe.skipIf(!RUNS)("a failure after any step leaves nothing behind", () => {
  const clean = ops(faultyRunner(Number.POSITIVE_INFINITY).runner);

  it("ensureBridge", async () => {
    const failed = await injectEverywhere(
      async () => {},
      (o) => o.ensureBridge({ name: "bgr0", address: "172.30.0.1/24" }),
      async () => void (await clean.deleteBridge({ name: "bgr0" })),
    );
    expect(failed).toBe(4); // add, alias, address, up
  });

  it("createTap", async () => {
    const failed = await injectEverywhere(
      async () => void (await clean.ensureBridge({ name: "bgr0", address: "172.30.0.1/24" })),
      (o) => o.createTap({ vmId: "box", bridge: "bgr0", pool: false, fromPool: "" }),
      async () => {
        await clean.deleteTap({ vmId: "box", poolName: "" });
        await clean.deleteBridge({ name: "bgr0" });
      },
    );
    expect(failed).toBe(4); // tuntap add, alias, master, up
  });

  it("taking a tap over from the warm pool", async () => {
    let pooled = "";
    const failed = await injectEverywhere(
      async () => {
        await clean.ensureBridge({ name: "bgr0", address: "172.30.0.1/24" });
        pooled = (await clean.createTap({ vmId: "", bridge: "bgr0", pool: true, fromPool: "" })).name;
      },
      (o) => o.createTap({ vmId: "box", bridge: "bgr0", pool: false, fromPool: pooled }),
      async () => {
        await clean.deleteTap({ vmId: "box", poolName: "" });
        await clean.deleteBridge({ name: "bgr0" });
      },
    );
    expect(failed).toBe(4); // down, rename, alias, up
  });

  it("enableNat and disableNat are single transactions", async () => {
    await clean.ensureBridge({ name: "bgr0", address: "172.30.0.1/24" });
    const before = state();
    await expect(
      ops(faultyRunner(1).runner).enableNat({ vmId: "box", guestAddress: "172.30.0.5", bridge: "bgr0" }),
    ).rejects.toThrow("injected failure");
    expect(state()).toBe(before);
    await clean.enableNat({ vmId: "box", guestAddress: "172.30.0.5", bridge: "bgr0" });
    const withRule = state();
    await expect(ops(faultyRunner(1).runner).disableNat({ vmId: "box" })).rejects.toThrow("injected failure");
    expect(state()).toBe(withRule);
    await clean.disableNat({ vmId: "box" });
    expect(state()).toBe(before);
    await clean.deleteBridge({ name: "bgr0" });
  });
});
