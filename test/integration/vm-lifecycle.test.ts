/**
 * VMs through the real three services and the CLI: the orchestrator and the
 * puller run as the owner (uid 1000), the privileged helper as root inside a
 * throwaway network namespace (real bridge, taps, loop devices, e2fsck and
 * debugfs). This machine has no KVM and no Firecracker: the helper launches
 * test-fixtures/fake-vmm.mjs, which serves Firecracker's API and records what
 * banger configured; no guest boots, so creates do not wait for SSH.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createUnixTransport } from "@banger/common";
import { VmService } from "@banger/gen/banger/v1/vm_pb.js";
import { createClient } from "@connectrpc/connect";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OWNER, FAKE_VM_TOOLS, startFakeVmCluster } from "./fake-vm-cluster.js";
import { OWNER_CAN_READ_CHECKOUT, waitUntil, type Cluster } from "./harness.js";
import { IS_ROOT, type NetNs } from "./netns.js";

const RUNS =
  IS_ROOT && OWNER_CAN_READ_CHECKOUT && requireTools("the VM lifecycle on fake VMMs", FAKE_VM_TOOLS).length === 0;
const live = describe.skipIf(!RUNS);
// Each test drives many CLI calls through real processes; a loaded machine may take a while.

let ns: NetNs;
let cluster: Cluster;
let shutdown: () => Promise<void>;

beforeAll(async () => {
  if (!RUNS) return;
  const started = await startFakeVmCluster({ withInitrd: true });
  ({ ns, cluster } = started);
  shutdown = started.shutdown;
  // The owner's git identity (the services' HOME is the cluster's directory) goes onto each work disk.
  writeFileSync(join(cluster.dir, ".gitconfig"), "[user]\n\tname = Ada Lovelace\n\temail = ada@example.org\n");
});

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
  vsockCid: number;
  pid?: number;
}

const show = async (name: string) => {
  const result = await cluster.cli(["vm", "show", name, "--json"]);
  expect(result.code, result.stderr).toBe(0);
  return (JSON.parse(result.stdout) as VmJson[])[0] as VmJson;
};
/** Fake VMMs of this cluster still running (VMMs outlive the services, by design). */
const fakeVmms = () =>
  spawnSync("pgrep", ["-f", `fake-vmm.mjs --api-sock ${cluster.runtimeDir}/`], { encoding: "utf8" })
    .stdout.split("\n")
    .filter((l) => l !== "");
/** VMs' taps (warm-pool taps are `bgr-p…`; a VM's is `bgr-` + hex). */
const taps = () => ns.links().filter((l) => l.ifname.startsWith("bgr-") && !l.ifname.startsWith("bgr-p"));
const poolTaps = () => ns.links().filter((l) => l.ifname.startsWith("bgr-p"));

live("a VM's life through the CLI", () => {
  it("create configures the VMM exactly, on a tap of the bridge, as the owner; stop, start and delete leave nothing", async () => {
    const created = await cluster.cli(["vm", "create", "--name", "box", "--image", "tiny", "--no-ssh-wait", "--nat"]);
    expect(created.code, created.stderr).toBe(0);
    expect(created.stderr).toMatch(/^creating box \(op-[0-9a-f]{12}\)\n/);
    for (const stage of [
      "reserve",
      "root-disk",
      "fsck",
      "guest-files",
      "work-disk",
      "tap",
      "launch-vmm",
      "configure-vmm",
      "start-vmm",
      "network",
    ]) {
      expect(created.stderr).toMatch(new RegExp(`\\n  ${stage}\\s+done`));
    }
    const vm = await show("box");
    expect(vm).toMatchObject({ name: "box", state: "VM_STATE_STARTING", guestIp: "172.30.0.2", vsockCid: 3 });

    // What the fake Firecracker was told, request by request.
    const vmRun = join(cluster.runtimeDir, "vms", vm.id);
    const requests = readFileSync(join(vmRun, "fake-firecracker.requests.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { method: string; path: string; body?: Record<string, unknown> })
      .filter((r) => r.method !== "GET");
    const tap = taps()[0];
    expect(requests.map((r) => `${r.method} ${r.path}`)).toEqual([
      "PUT /machine-config",
      "PUT /boot-source",
      "PUT /drives/root",
      "PUT /drives/work",
      "PUT /network-interfaces/eth0",
      "PUT /vsock",
      "PUT /actions",
    ]);
    const vmState = join(cluster.stateDir, "vms", vm.id);
    expect(requests.map((r) => r.body)).toEqual([
      { vcpu_count: 2, mem_size_mib: 1024, smt: false },
      {
        kernel_image_path: join(cluster.stateDir, "kernels", "k61", "vmlinux"),
        initrd_path: join(cluster.stateDir, "kernels", "k61", "initrd"),
        boot_args:
          "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw ip=172.30.0.2::172.30.0.1:255.255.255.0:box:eth0:off " +
          `banger.id=${vm.id}`,
      },
      { drive_id: "root", path_on_host: join(vmState, "root.ext4"), is_root_device: true, is_read_only: false },
      { drive_id: "work", path_on_host: join(vmState, "work.ext4"), is_root_device: false, is_read_only: false },
      { iface_id: "eth0", host_dev_name: tap?.ifname, guest_mac: vm.mac },
      { guest_cid: 3, uds_path: join(vmRun, "vsock.sock") },
      { action_type: "InstanceStart" },
    ]);
    expect(tap?.master).toBe("bgr0");
    // The warm pool is topped up in the background: four taps on the bridge, ready for the next creates.
    await waitUntil(() => poolTaps().length === 4, undefined, "the warm tap pool");
    expect(poolTaps().every((link) => link.master === "bgr0")).toBe(true);
    // `ip -j` names the tap's user by name when the uid has one.
    const ownerName = spawnSync("id", ["-nu", String(OWNER)], { encoding: "utf8" }).stdout.trim();
    expect([OWNER, ownerName]).toContain(tap?.linkinfo?.info_data?.user);
    expect(ns.ruleset()).toContain("172.30.0.2");
    // The guest files went into the root disk, the key into the work disk.
    const cat = (image: string, path: string) =>
      execFileSync("debugfs", ["-R", `cat ${path}`, image], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    expect(cat(join(vmState, "root.ext4"), "/etc/hostname")).toBe("box\n");
    expect(cat(join(vmState, "work.ext4"), "/.ssh/authorized_keys")).toMatch(/^ssh-ed25519 \S+ banger\n$/);
    expect(cat(join(vmState, "work.ext4"), "/.gitconfig")).toContain("Ada Lovelace");
    expect(fakeVmms()).toHaveLength(1);

    // Logs, stats and the ssh command of the running VM.
    const consoleLog = await cluster.cli(["vm", "logs", "box"]);
    expect(consoleLog.stdout).toContain(`fake-vmm: console of ${vm.id}`);
    const vmmLog = await cluster.cli(["vm", "logs", "box", "--vmm", "--tail", "1"]);
    expect(vmmLog.stdout.trim().split("\n")).toHaveLength(1);
    expect(vmmLog.stdout).toMatch(/^fake-vmm: /);
    const stats = JSON.parse((await cluster.cli(["vm", "stats", "box", "--json"])).stdout) as Record<string, string>;
    expect(Number(stats["memoryRssBytes"])).toBeGreaterThan(1_000_000);
    expect(Number(stats["workDiskUsedBytes"])).toBeGreaterThan(0);
    const ssh = await cluster.cli(["vm", "ssh", "box", "--print"]);
    expect(ssh.stdout).toMatch(
      /^ssh -i \S+\/ssh\/id_ed25519 -o IdentitiesOnly=yes -o UserKnownHostsFile=\S+\/ssh\/known_hosts -o StrictHostKeyChecking=accept-new -o HostKeyAlias=box\.vm -p 22 root@172\.30\.0\.2\n$/,
    );

    const stopped = await cluster.cli(["vm", "stop", "box"]);
    expect(stopped.code, stopped.stderr).toBe(0);
    expect((await show("box")).state).toBe("VM_STATE_STOPPED");
    expect([fakeVmms(), taps(), ns.ruleset().includes("172.30.0.2")]).toEqual([[], [], false]);
    const execStopped = await cluster.cli(["vm", "exec", "box", "--", "true"]);
    expect([execStopped.code, execStopped.stderr]).toEqual([1, expect.stringMatching(/VM box is not running/)]);
    const statsStopped = await cluster.cli(["vm", "stats", "box"]);
    expect([statsStopped.code, statsStopped.stderr]).toEqual([1, expect.stringMatching(/VM box is not running/)]);
    const again = await cluster.cli(["vm", "stop", "box"]);
    expect([again.code, again.stderr]).toEqual([1, expect.stringMatching(/VM box is not running \(op-[0-9a-f]{12}\)/)]);

    const started = await cluster.cli(["vm", "start", "box", "--no-ssh-wait"]);
    expect(started.code, started.stderr).toBe(0);
    expect(started.stderr).toMatch(/\n  tap\s+done \([\d.]+ s\): tap bgr-[0-9a-f]{11} from the warm pool\n/);
    expect((await show("box")).state).toBe("VM_STATE_STARTING");
    expect(fakeVmms()).toHaveLength(1);

    const deleted = await cluster.cli(["vm", "delete", "box"]);
    expect(deleted.code, deleted.stderr).toBe(0);
    expect([fakeVmms(), taps(), ns.ruleset().includes("172.30.0.2")]).toEqual([[], [], false]);
    expect(existsSync(vmState)).toBe(false);
    expect(JSON.parse((await cluster.cli(["vm", "list", "--json"])).stdout)).toEqual([]);
    const twice = await cluster.cli(["vm", "delete", "box"]);
    expect([twice.code, twice.stderr]).toEqual([0, "no VM box: nothing to delete\n"]);
  }, 120_000);

  it("a create that fails at a stage unwinds: no tap, no VMM, no loop device, no files, no row", async () => {
    // Loop devices of this cluster (other tests and programs may use loop devices meanwhile).
    const ourLoops = () =>
      execFileSync("losetup", ["-l", "-n", "-O", "NAME,BACK-FILE"], { encoding: "utf8" })
        .split("\n")
        .filter((line) => line.includes(cluster.stateDir));
    const loopsBefore = ourLoops();
    // A kernel whose file is gone fails configure-vmm (Firecracker cannot open it) after tap and launch.
    const broken = join(cluster.stateDir, "kernels", "k61", "vmlinux");
    const saved = readFileSync(broken);
    execFileSync("rm", [broken]);
    try {
      const failed = await cluster.cli(["vm", "create", "--name", "bad", "--image", "tiny", "--no-ssh-wait"]);
      expect(failed.code).toBe(1);
      expect(failed.stderr).toMatch(
        /banger: failed at configure-vmm: firecracker PUT \/boot-source: .*\(op-[0-9a-f]{12}\)\n$/,
      );
    } finally {
      writeFileSync(broken, saved);
      execFileSync("chown", [`${OWNER}:${OWNER}`, broken]);
    }
    expect([fakeVmms(), taps()]).toEqual([[], []]);
    expect(readdirSync(join(cluster.stateDir, "vms"))).toEqual([]);
    expect(ourLoops()).toEqual(loopsBefore);
    expect(JSON.parse((await cluster.cli(["vm", "list", "--json"])).stdout)).toEqual([]);
  }, 120_000);

  it("keeps names, addresses and references unique through the API, and promotes a stopped VM to an image", async () => {
    const create = (name: string, image = "tiny") =>
      cluster.cli(["vm", "create", "--name", name, "--image", image, "--no-ssh-wait"]);
    expect((await create("one")).code).toBe(0);
    expect((await create("two")).code).toBe(0);
    const [one, two] = [await show("one"), await show("two")];
    expect(one.guestIp).not.toBe(two.guestIp);
    expect(one.mac).not.toBe(two.mac);
    expect(one.vsockCid).not.toBe(two.vsockCid);

    const taken = await create("one");
    expect([taken.code, taken.stderr]).toEqual([
      1,
      expect.stringMatching(/^banger: a VM named one already exists \(op-/),
    ]);
    const imageInUse = await cluster.cli(["image", "delete", "tiny"]);
    expect([imageInUse.code, imageInUse.stderr]).toEqual([1, expect.stringMatching(/image tiny is used by one, two/)]);
    const kernelInUse = await cluster.cli(["kernel", "delete", "k61"]);
    expect(kernelInUse.code).toBe(1);
    expect(kernelInUse.stderr).toContain("VM");

    const running = await cluster.cli(["image", "promote", "one", "snap"]);
    expect([running.code, running.stderr]).toEqual([1, expect.stringMatching(/VM one is running: stop it/)]);
    expect((await cluster.cli(["vm", "stop", "one"])).code).toBe(0);
    const promoted = await cluster.cli(["image", "promote", "one", "snap"]);
    expect(promoted.code, promoted.stderr).toBe(0);
    const snap = JSON.parse((await cluster.cli(["image", "show", "snap", "--json"])).stdout) as {
      source: string;
      defaultKernel: string;
      workSeedBytes: string;
    }[];
    expect(snap[0]).toMatchObject({ source: "IMAGE_SOURCE_PROMOTED", defaultKernel: "k61" });
    // A VM of the promoted image gets the promoted disks, with banger's files written anew.
    const three = await create("three", "snap");
    expect(three.code, three.stderr).toBe(0);
    const vmState = join(cluster.stateDir, "vms", (await show("three")).id);
    const cat = (image: string, path: string) =>
      execFileSync("debugfs", ["-R", `cat ${path}`, image], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    expect(cat(join(vmState, "root.ext4"), "/etc/hostname")).toBe("three\n");
    expect(cat(join(vmState, "root.ext4"), "/etc/os-release")).toBe("ID=tiny\n");
    expect(cat(join(vmState, "work.ext4"), "/.ssh/authorized_keys")).toMatch(/^ssh-ed25519 \S+ banger\n$/);

    for (const name of ["one", "two", "three"]) expect((await cluster.cli(["vm", "delete", name])).code).toBe(0);
    expect((await cluster.cli(["image", "delete", "snap"])).code).toBe(0);
    expect([fakeVmms(), taps()]).toEqual([[], []]);
  }, 120_000);

  it("kill -9 of the orchestrator: a running VM is kept, a create it cut off is undone and INTERRUPTED", async () => {
    const kept = await cluster.cli(["vm", "create", "--name", "keeper", "--image", "tiny", "--no-ssh-wait"]);
    expect(kept.code, kept.stderr).toBe(0);
    const keeper = await show("keeper");

    const { transport, close } = createUnixTransport(cluster.socket("orchestrator"), { peer: "orchestrator" });
    const { operation } = await createClient(VmService, transport).createVm({
      name: "cut",
      image: "tiny",
      skipSshWait: true,
    });
    close();
    // Hold the create at its first helper call, and kill the orchestrator under it.
    const helper = cluster.service("privileged").child;
    helper.kill("SIGSTOP");
    try {
      await cluster.kill9("orchestrator");
    } finally {
      helper.kill("SIGCONT");
    }
    await cluster.start("orchestrator");

    const op = JSON.parse((await cluster.cli(["op", "show", operation?.id ?? "", "--json"])).stdout) as {
      state: string;
      error: { reason: string };
    };
    expect([op.state, op.error.reason]).toEqual(["OPERATION_STATE_FAILED", "INTERRUPTED"]);
    const vms = JSON.parse((await cluster.cli(["vm", "list", "--json"])).stdout) as VmJson[];
    expect(vms.map((vm) => [vm.name, vm.pid])).toEqual([["keeper", keeper.pid]]);
    expect(fakeVmms()).toEqual([String(keeper.pid)]);
    expect(taps()).toHaveLength(1);
    expect(readdirSync(join(cluster.stateDir, "vms"))).toEqual([keeper.id]);
    expect(execFileSync("losetup", ["-l", "-n", "-O", "BACK-FILE"], { encoding: "utf8" })).not.toContain(
      join(cluster.stateDir, "vms"),
    );

    expect((await cluster.cli(["vm", "delete", "keeper"])).code).toBe(0);
    expect([fakeVmms(), taps()]).toEqual([[], []]);
  }, 120_000);
});

live("a VMM that cannot start", () => {
  it("fails the create at launch-vmm with the helper's reason, and unwinds the tap, the disks and the row", async () => {
    // A second cluster whose helper launches /bin/false as Firecracker: it exits at once.
    const second = await startFakeVmCluster({ firecracker: "/bin/false", rootfsSize: "32M" });
    const [other, otherNs] = [second.cluster, second.ns];
    try {
      const failed = await other.cli(["vm", "create", "--name", "box", "--image", "tiny", "--no-ssh-wait"]);
      expect(failed.code).toBe(1);
      expect(failed.stderr).toMatch(/\n  launch-vmm\s+FAILED/);
      expect(failed.stderr).toMatch(/banger: failed at launch-vmm: .*\(op-[0-9a-f]{12}\)\n$/);
      const vmTaps = otherNs.links().filter((l) => l.ifname.startsWith("bgr-") && !l.ifname.startsWith("bgr-p"));
      expect(vmTaps).toEqual([]);
      expect(readdirSync(join(other.stateDir, "vms"))).toEqual([]);
      expect(
        execFileSync("losetup", ["-l", "-n", "-O", "BACK-FILE"], { encoding: "utf8" }).includes(other.stateDir),
      ).toBe(false);
      expect(JSON.parse((await other.cli(["vm", "list", "--json"])).stdout)).toEqual([]);
    } finally {
      await second.shutdown();
    }
  }, 120_000);
});
