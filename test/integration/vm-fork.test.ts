/**
 * Forks (`vm create --from SNAP`) through the real services and the CLI, on the fake Firecracker
 * (services/privileged/test-fixtures/fake-vmm.mjs: PUT /snapshot/load with network_overrides and
 * vsock_override as Firecracker 1.12 documents them, PATCH /drives, each request recorded, and a fake
 * guest agent that records the programs it is asked to run). What the VMM was asked (its own tap, vsock
 * socket and disks in place of the snapshot's), what the agent was asked (thaw, then the identity
 * script with the fork's name, MAC and address), that two forks differ from each other and from their
 * source, that they outlive the source; refusals before anything is made; a failure after each fork
 * stage leaves the host and the state directory as they were, and so does a guest that does not take
 * its identity (the fake's `fake.identity=fail`, carried in the snapshot's memory): FORK_IDENTITY_FAILED.
 */
import { chownSync, closeSync, openSync, readFileSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FAKE_VM_TOOLS, OWNER, startFakeVmCluster } from "./fake-vm-cluster.js";
import { OWNER_CAN_READ_CHECKOUT, type Cluster } from "./harness.js";
import { hostState, poolFull } from "./host-state.js";
import { IS_ROOT, type NetNs } from "./netns.js";

const RUNS = IS_ROOT && OWNER_CAN_READ_CHECKOUT && requireTools("forks on fake VMMs", FAKE_VM_TOOLS).length === 0;
const live = describe.skipIf(!RUNS);

let cluster: Cluster;
let ns: NetNs;
let shutdown: () => Promise<void>;

beforeAll(async () => {
  if (!RUNS) return;
  const started = await startFakeVmCluster({ withInitrd: true });
  ({ cluster, ns } = started);
  shutdown = started.shutdown;
  // The kernel's initrd "has" banger's guest kit: its VMs' agent (the fake's) freezes, thaws and runs programs.
  const marker = join(cluster.stateDir, "kernels", "k61", "initrd.kit.json");
  writeFileSync(marker, `${JSON.stringify({ programs: ["qemu-ga"] })}\n`);
  chownSync(marker, OWNER, OWNER);
}, 120_000);

afterAll(async () => {
  if (!RUNS) return;
  await shutdown();
});

interface VmJson {
  name: string;
  id: string;
  state: string;
  guestIp: string;
  mac: string;
  image: string;
  kernel: string;
  vcpu: number;
  memoryMib: number;
}

const cli = async (args: string[], code = 0) => {
  const result = await cluster.cli(args);
  expect(result.code, `${args.join(" ")}: ${result.stderr}`).toBe(code);
  return result;
};

const show = async (name: string) => (JSON.parse((await cli(["vm", "show", name, "--json"])).stdout) as VmJson[])[0]!;

/** What the fake Firecracker of VM `id` accepted (GETs left out), as `METHOD path body` lines. */
const requests = (id: string) =>
  readFileSync(join(cluster.runtimeDir, "vms", id, "fake-firecracker.requests.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as { method: string; path: string; body: unknown })
    .filter((r) => r.method !== "GET")
    .map((r) => `${r.method} ${r.path}${r.body === null ? "" : ` ${JSON.stringify(r.body)}`}`);

/** The identity script the fake agent was asked to run in VM `name` (the last guest-exec's `sh -c` argument). */
async function identityScript(name: string): Promise<string> {
  const log = (await cli(["vm", "logs", name, "--vmm"])).stdout;
  const execs = log
    .split("\n")
    .filter((l) => l.includes("agent-exec"))
    .map((l) => JSON.parse(l.slice(l.indexOf("{"))) as { path: string; arg: string[]; capture: boolean });
  const last = execs.at(-1);
  expect(last).toMatchObject({ path: "/run/banger/busybox", capture: true });
  expect(last?.arg.slice(0, 2)).toEqual(["sh", "-c"]);
  return last?.arg[2] ?? "";
}

const snapshotDir = (name: string) => join(cluster.stateDir, "snapshots", name);

live("vm create --from (forks)", () => {
  it("a snapshot's device state names its own copies of the disks; the VM's drives point back at its own", async () => {
    await cli(["vm", "create", "--name", "src", "--image", "tiny", "--no-ssh-wait"]);
    const src = await show("src");
    const before = requests(src.id).length;
    await cli(["vm", "snapshot", "src", "--as", "s1"]);
    const dir = snapshotDir("s1");
    const own = join(cluster.stateDir, "vms", src.id);
    const drive = (id: string, path: string) =>
      `PATCH /drives/${id} ${JSON.stringify({ drive_id: id, path_on_host: path })}`;
    expect(requests(src.id).slice(before)).toEqual([
      'PATCH /vm {"state":"Paused"}',
      drive("root", join(dir, "root.ext4")),
      drive("work", join(dir, "work.ext4")),
      `PUT /snapshot/create ${JSON.stringify({ snapshot_type: "Full", snapshot_path: join(dir, "vmstate"), mem_file_path: join(dir, "memory") })}`,
      drive("root", join(own, "root.ext4")),
      drive("work", join(own, "work.ext4")),
      'PATCH /vm {"state":"Resumed"}',
    ]);
  }, 120_000);

  it("two forks load the snapshot with their own tap, vsock socket and disks, and take their own identity", async () => {
    const forked = await cli(["vm", "create", "--from", "s1", "--name", "f1", "--no-ssh-wait", "--json"]);
    for (const stage of ["reserve", "copy-disks", "tap", "launch-vmm", "restore", "identity", "network"]) {
      expect(forked.stderr).toMatch(new RegExp(`\\n  ${stage}\\s+done`));
    }
    // A fork does not boot: no configure-vmm, start-vmm, root-disk or guest-files stage.
    expect(forked.stderr).not.toMatch(/configure-vmm|start-vmm|guest-files|fsck/);
    await cli(["vm", "create", "--from", "s1", "--name", "f2", "--no-ssh-wait"]);
    const [src, f1, f2] = [await show("src"), await show("f1"), await show("f2")];
    // The snapshot's machine, their own addresses.
    for (const fork of [f1, f2]) {
      expect(fork).toMatchObject({ image: src.image, kernel: src.kernel, vcpu: src.vcpu, memoryMib: src.memoryMib });
      // --no-ssh-wait: STARTING until its SSH answers (the fake runs none), as a create's.
      expect(fork.state).toBe("VM_STATE_STARTING");
    }
    expect(new Set([src.guestIp, f1.guestIp, f2.guestIp]).size).toBe(3);
    expect(new Set([src.mac, f1.mac, f2.mac]).size).toBe(3);

    const dir = snapshotDir("s1");
    const links = ns.links().map((l) => l.ifname);
    for (const fork of [f1, f2]) {
      const sent = requests(fork.id);
      const load = JSON.parse(sent[0]!.slice("PUT /snapshot/load ".length)) as {
        network_overrides: { iface_id: string; host_dev_name: string }[];
      };
      expect(sent[0]).toMatch(/^PUT \/snapshot\/load /);
      expect(load).toEqual({
        snapshot_path: join(dir, "vmstate"),
        mem_backend: { backend_type: "File", backend_path: join(dir, "memory") },
        resume_vm: false,
        network_overrides: [{ iface_id: "eth0", host_dev_name: expect.stringMatching(/^bgr-/) as unknown }],
        vsock_override: { uds_path: join(cluster.runtimeDir, "vms", fork.id, "vsock.sock") },
      });
      // The tap named is the fork's own, on the host.
      expect(links).toContain(load.network_overrides[0]!.host_dev_name);
      const own = join(cluster.stateDir, "vms", fork.id);
      expect(sent.slice(1)).toEqual([
        `PATCH /drives/root ${JSON.stringify({ drive_id: "root", path_on_host: join(own, "root.ext4") })}`,
        `PATCH /drives/work ${JSON.stringify({ drive_id: "work", path_on_host: join(own, "work.ext4") })}`,
        'PATCH /vm {"state":"Resumed"}',
      ]);
      // The agent thawed what the snapshot froze, then ran the identity script with the fork's values.
      const log = (await cli(["vm", "logs", fork.name, "--vmm"])).stdout;
      expect(log.indexOf("agent-fsfreeze-thaw")).toBeGreaterThan(0);
      expect(log.indexOf("agent-exec")).toBeGreaterThan(log.indexOf("agent-fsfreeze-thaw"));
      const script = await identityScript(fork.name);
      expect(script).toContain(`echo '${fork.name}' >/proc/sys/kernel/hostname`);
      expect(script).toContain(`ifconfig eth0 hw ether '${fork.mac}' '${fork.guestIp}' netmask '255.255.255.0'`);
      expect(script).toContain(`echo '${fork.id}' >/etc/banger/host-keys-of`);
      // New host keys, made on the host, written where the guest's SSH servers read them.
      expect(script).toMatch(
        /printf %s '-----BEGIN OPENSSH PRIVATE KEY-----\n[^']+' >\/etc\/ssh\/ssh_host_ed25519_key/,
      );
      expect(script).toMatch(/printf '[\\0-7]+' >\/etc\/banger\/dropbear_ed25519_host_key/);
      // /etc/hostname as the create writes it, with the fork's name.
      expect(script).toContain(`put '/etc/hostname' '${fork.name}\n'`);
      // Firecracker cannot hold the link down: the script announces the new address itself.
      expect(script).toContain(`arping -U -c 1 -I eth0 '${fork.guestIp}'`);
    }
    // Each fork's entropy and host keys are its own.
    const kitKey = async (name: string) =>
      /printf '([^']*)' >\/etc\/banger\/dropbear_ed25519_host_key/.exec(await identityScript(name))?.[1];
    expect(await kitKey("f1")).not.toBe(await kitKey("f2"));
    const entropy = async (name: string) => /printf '([^']*)' >\/dev\/urandom/.exec(await identityScript(name))?.[1];
    expect(await entropy("f1")).not.toBe(await entropy("f2"));
  }, 120_000);

  it("a resume sets the guest's clock through the agent (its vCPUs stood still meanwhile)", async () => {
    const execsBefore = ((await cli(["vm", "logs", "f1", "--vmm"])).stdout.match(/agent-exec/g) ?? []).length;
    await cli(["vm", "pause", "f1"]);
    const before = Math.floor(Date.now() / 1000);
    await cli(["vm", "resume", "f1"]);
    const log = (await cli(["vm", "logs", "f1", "--vmm"])).stdout.split("\n").filter((l) => l.includes("agent-exec"));
    expect(log.length).toBe(execsBefore + 1);
    const exec = JSON.parse(log.at(-1)!.slice(log.at(-1)!.indexOf("{"))) as { path: string; arg: string[] };
    expect(exec.path).toBe("/run/banger/busybox");
    expect(exec.arg.slice(0, 3)).toEqual(["date", "-u", "-s"]);
    const set = Number(exec.arg[3]?.slice(1));
    expect(set).toBeGreaterThanOrEqual(before - 1);
    expect(set).toBeLessThanOrEqual(Math.floor(Date.now() / 1000) + 1);
  }, 60_000);

  it("the forks outlive their source and the snapshot (their files are their own), and stop and start as any VM", async () => {
    await cli(["vm", "delete", "src"]);
    await cli(["snapshot", "delete", "s1"]);
    for (const name of ["f1", "f2"]) {
      expect((await show(name)).state).toBe("VM_STATE_STARTING");
      await cli(["vm", "stop", name, "--force"]);
      await cli(["vm", "start", name, "--no-ssh-wait"]);
      expect((await show(name)).state).not.toBe("VM_STATE_FAILED");
    }
    await cli(["vm", "delete", "f1"]);
    await cli(["vm", "delete", "f2"]);
  }, 120_000);

  it("refuses a missing snapshot and a machine that differs from the snapshot's, before anything is made", async () => {
    await cli(["vm", "create", "--name", "src2", "--image", "tiny", "--no-ssh-wait"]);
    await cli(["vm", "snapshot", "src2", "--as", "s2"]);
    await poolFull(ns, cluster);
    const before = hostState(ns, cluster);
    const missing = await cli(["vm", "create", "--from", "nope", "--name", "x"], 1);
    expect(missing.stderr).toMatch(/snapshot "nope" does not exist/);
    const differs = await cli(["vm", "create", "--from", "s2", "--name", "x", "--vcpu", "3", "--memory", "512"], 1);
    expect(differs.stderr).toMatch(
      /a fork of snapshot s2 has its machine; leave these out: vcpu 3 \(the snapshot's is 2\), memory 512 MiB \(the snapshot's is 1024 MiB\)/,
    );
    const taken = await cli(["vm", "create", "--from", "s2", "--name", "src2"], 1);
    expect(taken.stderr).toMatch(/a VM named src2 already exists/);
    expect(hostState(ns, cluster)).toEqual(before);
  }, 120_000);

  it.each(["reserve", "copy-disks", "tap", "launch-vmm", "restore", "identity", "network"])(
    "a failure after stage %s leaves the host and the state directory as they were",
    async (stage) => {
      await cluster.stop("orchestrator");
      await cluster.start("orchestrator", {}, { failAfterStages: [stage] });
      await poolFull(ns, cluster);
      const before = hostState(ns, cluster);
      const result = await cli(["vm", "create", "--from", "s2", "--name", "doomed", "--no-ssh-wait"], 1);
      expect(result.stderr).toMatch(new RegExp(`banger: failed at ${stage}: injected failure after stage ${stage}`));
      await poolFull(ns, cluster);
      expect(hostState(ns, cluster)).toEqual(before);
      expect((JSON.parse((await cli(["vm", "list", "--json"])).stdout) as VmJson[]).map((v) => v.name)).toEqual([
        "src2",
      ]);
    },
    90_000,
  );

  it("a guest that does not take its identity fails the fork at identity in the guest's words, and leaves nothing", async () => {
    await cluster.stop("orchestrator");
    await cluster.start("orchestrator");
    // The fake guest's misbehaviour rides in the snapshot's memory, as a kernel file carries fake.panic.
    const memory = openSync(join(snapshotDir("s2"), "memory"), "r+");
    writeSync(memory, Buffer.from(" fake.identity=fail "), 0, undefined, 4096);
    closeSync(memory);
    await poolFull(ns, cluster);
    const before = hostState(ns, cluster);
    const result = await cli(["vm", "create", "--from", "s2", "--name", "stubborn", "--no-ssh-wait"], 1);
    expect(result.stderr).toMatch(
      /banger: failed at identity: the guest did not take the fork's identity \(exit 1\): failed: hostname\nfailed: \$BB ip link set dev eth0 \(op-[0-9a-f]+\)/,
    );
    const opId = /\((op-[0-9a-f]+)\)/.exec(result.stderr)?.[1] ?? "";
    const op = JSON.parse((await cli(["op", "show", opId, "--json"])).stdout) as {
      state: string;
      error: { stage: string; reason: string; code: string };
    };
    expect(op).toMatchObject({
      state: "OPERATION_STATE_FAILED",
      error: { stage: "identity", reason: "FORK_IDENTITY_FAILED" },
    });
    await poolFull(ns, cluster);
    expect(hostState(ns, cluster)).toEqual(before);
    expect((JSON.parse((await cli(["vm", "list", "--json"])).stdout) as VmJson[]).map((v) => v.name)).toEqual(["src2"]);
  }, 90_000);
});
