/**
 * Cancelling a create from the CLI, through the real three services on fake VMMs: Ctrl-C (SIGINT to the CLI
 * process) during `vm create`, a second Ctrl-C, `--detach`, and `op cancel`. Each time the client's exit code
 * and words are checked, then the operation's state and what is left on the host: after a cancel nothing
 * (no tap but the warm pool's, no NAT rule, no loop device, no VMM, no file, no row, nothing in the
 * helper's inventory that was not there before).
 *
 * The slow moments: wait-ssh (the fake VMM boots no guest, so the create waits for SSH until cancelled),
 * and for a cancel that cannot stop at once, a delay injected before start-vmm
 * (test/support/orchestrator-with-faults.mjs, BANGER_DELAY_STAGE).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FAKE_VM_TOOLS, startFakeVmCluster } from "./fake-vm-cluster.js";
import { hostState } from "./host-state.js";
import { BANGER, OWNER_CAN_READ_CHECKOUT, ROOT, type Cluster } from "./harness.js";
import { IS_ROOT, type NetNs } from "./netns.js";

const RUNS = IS_ROOT && OWNER_CAN_READ_CHECKOUT && requireTools("cancel on fake VMMs", FAKE_VM_TOOLS).length === 0;
const live = describe.skipIf(!RUNS);

let ns: NetNs;
let cluster: Cluster;
let shutdown: () => Promise<void>;

beforeAll(async () => {
  if (!RUNS) return;
  const started = await startFakeVmCluster({ rootfsSize: "32M" });
  ({ ns, cluster } = started);
  shutdown = started.shutdown;
  // One VM made and removed first: the bridge, its DNS and the warm tap pool exist from here on.
  for (const args of [
    ["vm", "create", "--name", "warm", "--image", "tiny", "--no-ssh-wait"],
    ["vm", "delete", "warm"],
  ]) {
    const result = await cluster.cli(args);
    if (result.code !== 0) throw new Error(`${args.join(" ")}: ${result.stderr}`);
  }
}, 120_000);

afterAll(async () => {
  if (!RUNS) return;
  await shutdown();
});

/** A CLI process the test can signal, with what it printed so far. */
interface Running {
  readonly child: ChildProcess;
  stderr: string;
  stdout: string;
  readonly exited: Promise<number | null>;
  /** Resolves once stderr matches `pattern` (fails after 30 s with what it printed). */
  until(pattern: RegExp): Promise<void>;
}

function startCli(args: readonly string[]): Running {
  const child = spawn(BANGER, args, {
    env: { ...process.env, BANGER_SOCKET: "", BANGER_RUNTIME_DIR: cluster.runtimeDir },
  });
  const running: Running = {
    child,
    stderr: "",
    stdout: "",
    exited: new Promise((resolve) => child.once("exit", (code) => resolve(code))),
    until: async (pattern) => {
      const deadline = Date.now() + 30_000;
      while (!pattern.test(running.stderr)) {
        if (Date.now() > deadline) throw new Error(`no ${String(pattern)} in: ${running.stderr}`);
        if (child.exitCode !== null)
          throw new Error(`exited ${child.exitCode} before ${String(pattern)}: ${running.stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
  };
  child.stdout?.on("data", (chunk: Buffer) => (running.stdout += chunk.toString()));
  child.stderr?.on("data", (chunk: Buffer) => (running.stderr += chunk.toString()));
  return running;
}

/**
 * What the helper lists as banger's, less the warm pool's taps (refilled under new names). Asked as the owner
 * (the only uid the helper answers) by test/support/helper-inventory.mjs.
 */
const INVENTORY = join(ROOT, "test/support/helper-inventory.mjs");

function inventory() {
  const run = spawnSync(
    "setpriv",
    ["--reuid", "1000", "--regid", "1000", "--clear-groups", "node", INVENTORY, cluster.socket("privileged")],
    { encoding: "utf8" },
  );
  if (run.status !== 0) throw new Error(`the helper's inventory: ${run.stderr}`);
  return JSON.parse(run.stdout) as unknown;
}

/** What banger has on the host and on disk (the warm pool's size aside: it refills meanwhile), and the helper's inventory. */
function snapshot() {
  const { poolTaps: _refilling, ...host } = hostState(ns, cluster);
  return { ...host, inventory: inventory() };
}

async function opState(id: string): Promise<{ state: string; cancelRequested?: boolean; error?: { reason: string } }> {
  const shown = await cluster.cli(["op", "show", id, "--json"]);
  expect(shown.code, shown.stderr).toBe(0);
  return JSON.parse(shown.stdout) as { state: string; cancelRequested?: boolean; error?: { reason: string } };
}

async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const OP = /\((op-[0-9a-f]{12})\)/;

live("cancelling a create from the CLI", () => {
  it("the first Ctrl-C cancels: the CLI shows the unwind, exits 130 naming the cancel; nothing is left", async () => {
    const before = snapshot();
    // --timeout 1s: the watch is quiet for longer than that while bangerd answers its keepalives, and goes on.
    const cli = startCli([
      "--timeout",
      "1s",
      "vm",
      "create",
      "--name",
      "doomed",
      "--image",
      "tiny",
      "--nat",
      "--ssh-timeout",
      "120",
    ]);
    // The VMM runs, the tap and disks exist: the create waits for the guest's SSH (the fake VMM has no guest).
    await cli.until(/\n {2}wait-ssh +…\n/);
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    expect(cli.child.exitCode, cli.stderr).toBe(null);
    const op = OP.exec(cli.stderr)?.[1] ?? "";
    cli.child.kill("SIGINT");
    expect(await cli.exited, cli.stderr).toBe(130);
    expect(cli.stderr).toContain(`cancelling ${op}: it unwinds what it made (Ctrl-C again to stop watching`);
    expect(
      cli.stderr.endsWith(`banger: cancelled at wait-ssh; what it had made was unwound (${op})\n`),
      cli.stderr,
    ).toBe(true);
    expect(await opState(op)).toMatchObject({
      state: "OPERATION_STATE_CANCELLED",
      error: { reason: "CANCELLED" },
    });
    expect(snapshot()).toEqual(before);
    expect(JSON.parse((await cluster.cli(["vm", "list", "--json"])).stdout)).toEqual([]);
  }, 90_000);

  it("a second Ctrl-C stops watching (exit 130, how to follow it); the operation goes on and ends cancelled", async () => {
    await cluster.stop("orchestrator");
    await cluster.start("orchestrator", {}, { delayStages: { "start-vmm": 4_000 } });
    const before = snapshot();
    const cli = startCli(["vm", "create", "--name", "slow", "--image", "tiny", "--no-ssh-wait"]);
    await cli.until(/\n {2}start-vmm +…\n/);
    const op = OP.exec(cli.stderr)?.[1] ?? "";
    cli.child.kill("SIGINT");
    await cli.until(/cancelling op-/);
    cli.child.kill("SIGINT");
    expect(await cli.exited, cli.stderr).toBe(130);
    expect(
      cli.stderr.endsWith(`banger: stopped watching ${op}; it goes on (cancel requested): banger op watch ${op}\n`),
      cli.stderr,
    ).toBe(true);
    // start-vmm cannot stop before its end: the operation still runs, its cancel asked for.
    expect(await opState(op)).toMatchObject({ state: "OPERATION_STATE_RUNNING", cancelRequested: true });
    const watched = await cluster.cli(["op", "watch", op]);
    expect(watched.code).toBe(1);
    expect(watched.stderr).toMatch(new RegExp(`banger: cancelled( at \\S+)?: .*\\(${op}\\)\\n$`));
    expect((await opState(op)).state).toBe("OPERATION_STATE_CANCELLED");
    expect(snapshot()).toEqual(before);
  }, 90_000);

  it("op cancel cancels a create another command started and shows it to its end; --detach returns the id at once", async () => {
    const before = snapshot();
    const detached = await cluster.cli([
      "vm",
      "create",
      "--name",
      "later",
      "--image",
      "tiny",
      "--no-ssh-wait",
      "--detach",
    ]);
    expect(detached.code, detached.stderr).toBe(0);
    const op = detached.stdout.trim();
    expect(op).toMatch(/^op-[0-9a-f]{12}$/);
    expect(detached.stderr).toBe(`creating later (${op})\n`);
    expect((await opState(op)).state).toBe("OPERATION_STATE_RUNNING"); // start-vmm still waits its 4 s
    const cancelled = await cluster.cli(["op", "cancel", op]);
    expect(cancelled.code, cancelled.stderr).toBe(0);
    expect(cancelled.stderr).toMatch(new RegExp(`^cancelling ${op} \\(later\\)\\n`));
    expect(cancelled.stderr.endsWith(`${op} cancelled; what it had made was unwound\n`), cancelled.stderr).toBe(true);
    expect(snapshot()).toEqual(before);
    // Cancelling it again changes nothing.
    const again = await cluster.cli(["op", "cancel", op]);
    expect([again.code, again.stderr]).toEqual([0, `${op} had already ended: cancelled\n`]);
  }, 90_000);

  it("Ctrl-C once a delete removes files lets it finish (a cancel there would leave the VMM's files): exit 0, nothing left", async () => {
    await cluster.stop("orchestrator");
    await cluster.start("orchestrator", {}, { delayStages: { "remove-files": 3_000 } });
    const before = snapshot();
    const created = await cluster.cli(["vm", "create", "--name", "gone", "--image", "tiny", "--no-ssh-wait"]);
    expect(created.code, created.stderr).toBe(0);
    const cli = startCli(["vm", "delete", "gone"]);
    await cli.until(/\n {2}remove-files +…\n/);
    cli.child.kill("SIGINT");
    expect(await cli.exited, cli.stderr).toBe(0);
    expect(cli.stderr).toMatch(/cancelling op-[0-9a-f]{12}: it unwinds what it made/);
    expect(cli.stderr.endsWith("deleted gone\n"), cli.stderr).toBe(true);
    expect(snapshot()).toEqual(before);
  }, 90_000);

  it("Ctrl-C before bangerd answered the create: it is cancelled as soon as its id is known; nothing is left", async () => {
    const before = snapshot();
    // bangerd stopped (SIGSTOP): the CLI's CreateVm waits unanswered in its socket, as under a slow start.
    const orchestrator = cluster.service("orchestrator").child.pid ?? 0;
    process.kill(orchestrator, "SIGSTOP");
    let cli: Running;
    try {
      cli = startCli(["vm", "create", "--name", "early", "--image", "tiny", "--ssh-timeout", "120"]);
      await new Promise((resolve) => setTimeout(resolve, 3_000)); // the CLI started and sent its call
      expect(cli.child.exitCode, cli.stderr).toBe(null);
      cli.child.kill("SIGINT");
      await cli.until(/cancelling as soon as bangerd answers/);
      expect(cli.child.exitCode, cli.stderr).toBe(null);
    } finally {
      process.kill(orchestrator, "SIGCONT");
    }
    expect(await cli.exited, cli.stderr).toBe(130);
    const op = OP.exec(cli.stderr)?.[1] ?? "";
    expect(cli.stderr).toContain(`cancelling ${op}: it unwinds what it made`);
    expect(cli.stderr).toMatch(
      /banger: cancelled(?: at [a-z-]+)?; what it had made was unwound \(op-[0-9a-f]{12}\)\n$/,
    );
    expect(await opState(op)).toMatchObject({ state: "OPERATION_STATE_CANCELLED" });
    expect(snapshot()).toEqual(before);
    expect(JSON.parse((await cluster.cli(["vm", "list", "--json"])).stdout)).toEqual([]);
  }, 90_000);

  it("--detach: the create goes on to its end without the CLI", async () => {
    await cluster.stop("orchestrator");
    await cluster.start("orchestrator");
    const detached = await cluster.cli([
      "vm",
      "create",
      "--name",
      "alone",
      "--image",
      "tiny",
      "--no-ssh-wait",
      "--detach",
    ]);
    expect(detached.code, detached.stderr).toBe(0);
    const op = detached.stdout.trim();
    await until(async () => (await opState(op)).state === "OPERATION_STATE_SUCCEEDED", `${op} to succeed`);
    expect((await cluster.cli(["vm", "delete", "alone"])).code).toBe(0);
  }, 90_000);
});
