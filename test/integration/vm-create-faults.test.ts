/**
 * A failure at every create stage in turn, through the real three services:
 * the orchestrator is restarted from its test entry with failure injection
 * (test/support/orchestrator-with-faults.mjs), which fails that stage right after its work succeeded (the hardest moment: what
 * it made exists, its own undo was never registered). wait-ssh fails for
 * real (the fake VMM boots no guest), and with what the guest printed when its
 * kernel panics. Each time the client gets the stage and a code, and the host (links, NAT rules, loop devices, VMM processes) and
 * the state directory are exactly as before the create.
 *
 * No KVM or Firecracker here: VMs run under test-fixtures/fake-vmm.mjs.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FAKE_VM_TOOLS, startFakeVmCluster } from "./fake-vm-cluster.js";
import { hostState, poolFull as poolFullOf } from "./host-state.js";
import { OWNER_CAN_READ_CHECKOUT, type Cluster } from "./harness.js";
import { IS_ROOT, type NetNs } from "./netns.js";

const RUNS =
  IS_ROOT && OWNER_CAN_READ_CHECKOUT && requireTools("VM create faults on fake VMMs", FAKE_VM_TOOLS).length === 0;
const live = describe.skipIf(!RUNS);

let ns: NetNs;
let cluster: Cluster;
let shutdown: () => Promise<void>;

beforeAll(async () => {
  if (!RUNS) return;
  const started = await startFakeVmCluster({ rootfsSize: "32M" });
  ({ ns, cluster } = started);
  shutdown = started.shutdown;
  // One VM made and removed first: the bridge, its DNS and the warm tap pool exist from here on, as on a used host.
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

const snapshot = () => hostState(ns, cluster);
const poolFull = () => poolFullOf(ns, cluster);

const INJECTED = [
  "resolve-image",
  "reserve",
  "work-disk",
  "root-disk",
  "fsck",
  "guest-files",
  "tap",
  "launch-vmm",
  "configure-vmm",
  "start-vmm",
  "network",
];

live("a failure at every create stage, through the real helper", () => {
  it.each(INJECTED)(
    "fails at %s with its code, and leaves the host and the state directory as they were",
    async (stage) => {
      await cluster.stop("orchestrator");
      await cluster.start("orchestrator", {}, { failAfterStages: [stage] });
      await poolFull();
      await poolFull();
      const before = snapshot();
      const result = await cluster.cli([
        "vm",
        "create",
        "--name",
        "doomed",
        "--image",
        "tiny",
        "--no-ssh-wait",
        "--nat",
      ]);
      expect(result.code, result.stderr).toBe(1);
      expect(result.stderr).toMatch(
        new RegExp(`banger: failed at ${stage}: injected failure after stage ${stage} \\(op-[0-9a-f]{12}\\)\\n$`),
      );
      const op = /\((op-[0-9a-f]{12})\)\n$/.exec(result.stderr)?.[1] ?? "";
      const shown = JSON.parse((await cluster.cli(["op", "show", op, "--json"])).stdout) as {
        state: string;
        error: { code: string; reason: string; stage: string };
      };
      expect([shown.state, shown.error]).toEqual([
        "OPERATION_STATE_FAILED",
        expect.objectContaining({ code: "internal", reason: "INJECTED_FAILURE", stage }),
      ]);
      await poolFull();
      expect(snapshot()).toEqual(before);
      expect(JSON.parse((await cluster.cli(["vm", "list", "--json"])).stdout)).toEqual([]);
    },
    60_000,
  );

  it("the installed bangerd (dist/bundle/main.js) ignores BANGER_FAIL_AFTER_STAGE: a create succeeds", async () => {
    await cluster.stop("orchestrator");
    const svc = await cluster.start("orchestrator", { BANGER_FAIL_AFTER_STAGE: INJECTED.join(",") });
    const created = await cluster.cli(["vm", "create", "--name", "whole", "--image", "tiny", "--no-ssh-wait"]);
    expect(created.code, created.stderr).toBe(0);
    const deleted = await cluster.cli(["vm", "delete", "whole"]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(svc.logs.filter((l) => l["msg"] === "failure injection is on")).toEqual([]);
  }, 60_000);

  it("fails at wait-ssh when no guest answers, with DEADLINE_EXCEEDED, and leaves nothing", async () => {
    await cluster.stop("orchestrator");
    await cluster.start("orchestrator");
    await poolFull();
    const before = snapshot();
    const result = await cluster.cli(["vm", "create", "--name", "silent", "--image", "tiny", "--ssh-timeout", "1"]);
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr).toMatch(/banger: failed at wait-ssh: .*\(op-[0-9a-f]{12}\)\n$/);
    // What the "guest" printed comes with the error, though the VM's files are gone.
    expect(result.stderr).toContain("\nthe VM's last output (console and VMM log):\n");
    expect(result.stderr).toMatch(/\n  console: fake-vmm: guest of \S+ booting /);
    await poolFull();
    expect(snapshot()).toEqual(before);
  }, 60_000);

  it("fails at once when the guest's kernel panics, with its console's end and the cause, and leaves nothing", async () => {
    // A placeholder kernel that carries the fake VMM's switch: the guest's kernel panics and the VMM exits.
    const pkg = join(cluster.dir, "panicky-kernel");
    mkdirSync(join(pkg, "boot"), { recursive: true });
    writeFileSync(
      join(pkg, "boot", "vmlinux-6.1.0-27-amd64"),
      Buffer.concat([Buffer.from("\x7fELF"), Buffer.alloc(4096), Buffer.from(" fake.panic=exit ")]),
    );
    execFileSync("chown", ["-R", "1000:1000", pkg]);
    const imported = await cluster.cli(["kernel", "import", "panicky", pkg]);
    expect(imported.code, imported.stderr).toBe(0);
    await poolFull();
    const before = snapshot();
    const t0 = Date.now();
    const result = await cluster.cli(["vm", "create", "--name", "panics", "--image", "tiny", "--kernel", "panicky"]);
    expect(result.code, result.stderr).toBe(1);
    // Not the 60 s SSH timeout: the wait ends when the VMM does.
    expect(Date.now() - t0).toBeLessThan(30_000);
    const cause =
      "the VMM exited before the guest was ready (the guest rebooted or powered off): the kernel could not mount " +
      "the root disk (no initramfs, or its driver for the disk is missing)";
    const lastLine =
      "  console: [    1.207200] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0) ]---";
    const lines = result.stderr.split("\n");
    const heading = lines.indexOf("the VM's last output (console and VMM log):");
    expect(heading, result.stderr).toBeGreaterThan(0);
    const shownTail = lines.slice(
      heading + 1,
      lines.findIndex((line, i) => i > heading && !line.startsWith("  ")),
    );
    expect(shownTail.filter((line) => line.startsWith("  console: "))).toHaveLength(20);
    expect(shownTail).toContain(lastLine);
    expect(shownTail.some((line) => line.startsWith("  vmm: fake-vmm: panic "))).toBe(true);
    const op = /\((op-[0-9a-f]{12})\)\n$/.exec(result.stderr)?.[1] ?? "";
    expect(result.stderr.endsWith(`banger: failed at wait-ssh: ${cause} (${op})\n`), result.stderr).toBe(true);
    // The operation keeps it: as JSON and as op show prints it.
    const shown = JSON.parse((await cluster.cli(["op", "show", op, "--json"])).stdout) as {
      error: { code: string; reason: string; stage: string; message: string; vmmLogTail: string };
    };
    expect(shown.error).toMatchObject({ code: "failed_precondition", reason: "VMM_EXITED", stage: "wait-ssh" });
    expect(shown.error.message).toBe(cause);
    expect(shown.error.vmmLogTail.split("\n").map((line) => `  ${line}`)).toEqual(shownTail);
    const text = (await cluster.cli(["op", "show", op])).stdout;
    expect(text).toContain(`error: ${cause} (VMM_EXITED)\nthe VM's last output (console and VMM log):\n`);
    expect(text).toContain(`${lastLine}\n`);
    await poolFull();
    expect(snapshot()).toEqual(before);
    expect(JSON.parse((await cluster.cli(["vm", "list", "--json"])).stdout)).toEqual([]);
  }, 60_000);
});
