/**
 * Snapshots of running VMs through the real services and the CLI, on the fake
 * Firecracker (services/privileged/test-fixtures/fake-vmm.mjs: PATCH /vm and
 * PUT /snapshot/create as Firecracker documents them, each request recorded,
 * and a fake guest agent that answers guest-fsfreeze-freeze/-thaw): what the
 * VMM and the agent were asked, the files and the row a snapshot leaves, that
 * the VM runs on after; a failure injected after each stage leaves no
 * snapshot (no directory, no row) and the VM running; image and kernel delete
 * refused while a snapshot needs them; snapshot delete removes its files.
 */
import { chownSync, existsSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FAKE_VM_TOOLS, OWNER, startFakeVmCluster } from "./fake-vm-cluster.js";
import { OWNER_CAN_READ_CHECKOUT, type Cluster } from "./harness.js";
import { IS_ROOT } from "./netns.js";

const RUNS = IS_ROOT && OWNER_CAN_READ_CHECKOUT && requireTools("snapshots on fake VMMs", FAKE_VM_TOOLS).length === 0;
const live = describe.skipIf(!RUNS);

let cluster: Cluster;
let shutdown: () => Promise<void>;

beforeAll(async () => {
  if (!RUNS) return;
  const started = await startFakeVmCluster({ withInitrd: true });
  cluster = started.cluster;
  shutdown = started.shutdown;
  // The kernel's initrd "has" banger's guest kit: its VMs' agent (the fake's) is asked to freeze and thaw.
  const marker = join(cluster.stateDir, "kernels", "k61", "initrd.kit.json");
  writeFileSync(marker, `${JSON.stringify({ programs: ["qemu-ga"] })}\n`);
  chownSync(marker, OWNER, OWNER);
});

afterAll(async () => {
  if (!RUNS) return;
  await shutdown();
});

interface VmJson {
  name: string;
  id: string;
  state: string;
}

interface SnapshotJson {
  name: string;
  vmName: string;
  image: string;
  kernel: string;
  vmm: string;
  vcpu: number;
  memoryMib: number;
  allocatedBytes: string;
}

const show = async (name: string) => {
  const result = await cluster.cli(["vm", "show", name, "--json"]);
  expect(result.code, result.stderr).toBe(0);
  return (JSON.parse(result.stdout) as VmJson[])[0] as VmJson;
};

const snapshots = async () => {
  const result = await cluster.cli(["snapshot", "list", "--json"]);
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as SnapshotJson[];
};

/** What the fake Firecracker of VM `id` accepted (GETs left out), as `METHOD path body` lines. */
const requests = (id: string) =>
  readFileSync(join(cluster.runtimeDir, "vms", id, "fake-firecracker.requests.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as { method: string; path: string; body: unknown })
    .filter((r) => r.method !== "GET")
    .map((r) => `${r.method} ${r.path}${r.body === null ? "" : ` ${JSON.stringify(r.body)}`}`);

const snapshotDir = (name: string) => join(cluster.stateDir, "snapshots", name);

live("vm snapshot", () => {
  it("freezes, pauses, copies the disks, has Firecracker write its state, resumes and thaws; the VM runs on", async () => {
    const created = await cluster.cli(["vm", "create", "--name", "sa", "--image", "tiny", "--no-ssh-wait"]);
    expect(created.code, created.stderr).toBe(0);
    const vm = await show("sa");
    const before = requests(vm.id).length;

    const taken = await cluster.cli(["vm", "snapshot", "sa", "--as", "s1", "--json"]);
    expect(taken.code, taken.stderr).toBe(0);
    for (const stage of ["freeze", "pause", "copy-disks", "save-state", "record", "resume", "thaw"]) {
      expect(taken.stderr).toMatch(new RegExp(`\\n  ${stage}\\s+done`));
    }
    expect(taken.stderr).toMatch(/\n  freeze\s+done \([\d.]+ s\): 1 file system frozen/);
    const dir = snapshotDir("s1");
    // The device state names the snapshot's copies of the disks (vm-fork.test.ts checks the PATCH /drives around it).
    expect(
      requests(vm.id)
        .slice(before)
        .filter((r) => !r.startsWith("PATCH /drives/")),
    ).toEqual([
      'PATCH /vm {"state":"Paused"}',
      `PUT /snapshot/create ${JSON.stringify({ snapshot_type: "Full", snapshot_path: join(dir, "vmstate"), mem_file_path: join(dir, "memory") })}`,
      'PATCH /vm {"state":"Resumed"}',
    ]);
    // The agent froze the guest before the pause and thawed it after the resume.
    const vmmLog = (await cluster.cli(["vm", "logs", "sa", "--vmm"])).stdout;
    expect(vmmLog.indexOf("agent-fsfreeze-freeze")).toBeGreaterThanOrEqual(0);
    expect(vmmLog.indexOf("agent-fsfreeze-thaw")).toBeGreaterThan(vmmLog.indexOf("agent-fsfreeze-freeze"));

    expect((await show("sa")).state).not.toBe("VM_STATE_PAUSED");
    // The root disk is the VM's clone (root.ext4), or its COW file (root.cow) where the root is a dm-snapshot.
    const files = readdirSync(dir).map((f) => (f === "root.cow" ? "root.ext4" : f));
    expect(files.sort()).toEqual(["memory", "root.ext4", "snapshot.json", "vmstate", "work.ext4"]);
    // The copies are sparse: the work disk takes far less than its size.
    const work = statSync(join(dir, "work.ext4"));
    expect(work.blocks * 512).toBeLessThan(work.size / 2);
    expect(statSync(join(dir, "memory")).uid).toBe(OWNER);

    const printed = JSON.parse(taken.stdout) as SnapshotJson[];
    const listed = await snapshots();
    expect(listed).toEqual(printed);
    expect(listed[0]).toMatchObject({
      name: "s1",
      vmName: "sa",
      image: "tiny",
      kernel: "k61",
      vmm: "firecracker",
      vcpu: 2,
      memoryMib: 1024,
    });
    expect(Number(listed[0]?.allocatedBytes)).toBeGreaterThan(0);
    const shown = await cluster.cli(["snapshot", "show", "s1"]);
    expect(shown.stdout).toMatch(/^vm:\s+sa$/m);

    // A second snapshot of the same name is refused before anything happens.
    const again = await cluster.cli(["vm", "snapshot", "sa", "--as", "s1"]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/a snapshot named "s1" already exists/);
    const badName = await cluster.cli(["vm", "snapshot", "sa", "--as", "Bad/Name"]);
    expect(badName.code).not.toBe(0);
    expect(badName.stderr).toMatch(/snapshot name must match/);
  }, 180_000);

  it("image and kernel delete are refused while a snapshot needs them, naming it; snapshot delete removes its files", async () => {
    // A stopped VM cannot be snapshotted; nothing is left of the try.
    expect((await cluster.cli(["vm", "stop", "sa", "--force"])).code).toBe(0);
    const stopped = await cluster.cli(["vm", "snapshot", "sa", "--as", "s2"]);
    expect(stopped.code).toBe(1);
    expect(stopped.stderr).toMatch(/VM sa is not running/);
    expect(existsSync(snapshotDir("s2"))).toBe(false);
    // The VM goes; its snapshot stays, and holds the image and kernel.
    expect((await cluster.cli(["vm", "delete", "sa"])).code).toBe(0);
    expect((await snapshots()).map((s) => s.name)).toEqual(["s1"]);
    const image = await cluster.cli(["image", "delete", "tiny"]);
    expect(image.code).toBe(1);
    expect(image.stderr).toMatch(/image tiny is needed by snapshot s1/);
    const kernel = await cluster.cli(["kernel", "delete", "k61"]);
    expect(kernel.code).toBe(1);
    expect(kernel.stderr).toMatch(/kernel "k61" is used by .*snapshot s1/);
    expect((await cluster.cli(["kernel", "show", "k61", "--json"])).stdout).toMatch(/snapshot:s1/);
    expect((await cluster.cli(["image", "show", "tiny", "--json"])).stdout).toMatch(
      /"usedBy":\s*\[\s*"snapshot:s1"\s*\]/,
    );
    // prune --all counts the image and its kernel as used: it would remove neither.
    const pruned = await cluster.cli(["prune", "--all", "--json"]);
    expect(pruned.code, pruned.stderr).toBe(0);
    expect(pruned.stdout).not.toMatch(/"name":\s*"(tiny|k61)"/);

    const deleted = await cluster.cli(["snapshot", "delete", "s1"]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(existsSync(snapshotDir("s1"))).toBe(false);
    expect(await snapshots()).toEqual([]);
    const missing = await cluster.cli(["snapshot", "show", "s1"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/snapshot "s1" does not exist/);
  }, 120_000);

  it.each(["freeze", "pause", "copy-disks", "save-state", "record", "resume", "thaw"])(
    "a failure after stage %s leaves no snapshot and the VM running, thawed",
    async (stage) => {
      await cluster.stop("orchestrator");
      await cluster.start("orchestrator", {}, { failAfterStages: [stage] });
      if (!(await cluster.cli(["vm", "show", "sf"])).stdout.includes("sf")) {
        const created = await cluster.cli(["vm", "create", "--name", "sf", "--image", "tiny", "--no-ssh-wait"]);
        expect(created.code, created.stderr).toBe(0);
      }
      const vm = await show("sf");
      const logBefore = (await cluster.cli(["vm", "logs", "sf", "--vmm"])).stdout;
      const thawsBefore = logBefore.split("agent-fsfreeze-thaw").length;

      const result = await cluster.cli(["vm", "snapshot", "sf", "--as", "doomed"]);
      expect(result.code, result.stderr).toBe(1);
      expect(result.stderr).toMatch(new RegExp(`banger: failed at ${stage}: injected failure after stage ${stage}`));
      expect(existsSync(snapshotDir("doomed"))).toBe(false);
      expect(await snapshots()).toEqual([]);
      const after = await show("sf");
      expect(after.state).not.toBe("VM_STATE_PAUSED");
      expect(requests(vm.id).at(-1)).not.toBe('PATCH /vm {"state":"Paused"}');
      // Every freeze was thawed (by the stage, or by the undo).
      const log = (await cluster.cli(["vm", "logs", "sf", "--vmm"])).stdout;
      expect(log.split("agent-fsfreeze-thaw").length - thawsBefore).toBe(1);
      expect(log.split("agent-fsfreeze-freeze").length).toBe(log.split("agent-fsfreeze-thaw").length);
    },
    90_000,
  );
});
