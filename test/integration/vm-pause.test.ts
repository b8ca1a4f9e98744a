/**
 * Pause and resume through the real services and the CLI, on the fake
 * Firecracker (services/privileged/test-fixtures/fake-vmm.mjs, which serves
 * PATCH /vm and GET / as Firecracker documents them and records each request):
 * what the VMM was asked, what list/show/exec/ssh/start say of a paused VM,
 * that an orchestrator restart finds it paused by asking the VMM, that a
 * stop of a paused VM resumes it before shutting the guest down; and suspend
 * to disk: stop --save snapshots it (PUT /snapshot/create), the next start
 * loads it (PUT /snapshot/load) instead of booting, a snapshot the VMM refuses
 * boots cold.
 */
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FAKE_VM_TOOLS, OWNER, startFakeVmCluster } from "./fake-vm-cluster.js";
import { OWNER_CAN_READ_CHECKOUT, type Cluster } from "./harness.js";
import { IS_ROOT } from "./netns.js";

const RUNS =
  IS_ROOT && OWNER_CAN_READ_CHECKOUT && requireTools("pause and resume on fake VMMs", FAKE_VM_TOOLS).length === 0;
const live = describe.skipIf(!RUNS);

let cluster: Cluster;
let shutdown: () => Promise<void>;

beforeAll(async () => {
  if (!RUNS) return;
  const started = await startFakeVmCluster({ withInitrd: true });
  cluster = started.cluster;
  shutdown = started.shutdown;
});

afterAll(async () => {
  if (!RUNS) return;
  await shutdown();
});

interface VmJson {
  name: string;
  id: string;
  state: string;
  pid?: number;
}

const show = async (name: string) => {
  const result = await cluster.cli(["vm", "show", name, "--json"]);
  expect(result.code, result.stderr).toBe(0);
  return (JSON.parse(result.stdout) as VmJson[])[0] as VmJson;
};

/** What the fake Firecracker of VM `id` accepted, as `METHOD path body` lines (GETs as `GET path`). */
const requests = (id: string) =>
  readFileSync(join(cluster.runtimeDir, "vms", id, "fake-firecracker.requests.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as { method: string; path: string; body: unknown })
    .map((r) => `${r.method} ${r.path}${r.body === null ? "" : ` ${JSON.stringify(r.body)}`}`);

live("pause and resume", () => {
  it("pauses and resumes through PATCH /vm; a paused VM says so to exec, ssh and start, and survives a restart of the orchestrator", async () => {
    const created = await cluster.cli(["vm", "create", "--name", "pz", "--image", "tiny", "--no-ssh-wait"]);
    expect(created.code, created.stderr).toBe(0);
    const vm = await show("pz");
    const booted = requests(vm.id).length;

    const paused = await cluster.cli(["vm", "pause", "pz"]);
    expect(paused.code, paused.stderr).toBe(0);
    expect(paused.stdout).toMatch(/^pz\s+paused\s+tiny\s/m);
    expect(requests(vm.id).slice(booted)).toEqual(['PATCH /vm {"state":"Paused"}']);
    expect(await show("pz")).toMatchObject({ state: "VM_STATE_PAUSED", pid: vm.pid });
    expect((await cluster.cli(["vm", "list"])).stdout).toMatch(/^pz\s+paused\s/m);

    // What needs the guest says it is paused and how to go on; nothing reaches the VMM.
    const resumeHint = "VM pz is paused: resume it with 'banger vm resume pz'";
    for (const args of [
      ["vm", "exec", "pz", "--", "true"],
      ["vm", "ssh", "pz", "--print"],
      ["vm", "start", "pz"],
      ["vm", "pause", "pz"],
    ]) {
      const refused = await cluster.cli(args);
      expect([refused.code, refused.stderr], args.join(" ")).toEqual([1, expect.stringContaining(resumeHint)]);
    }
    expect(requests(vm.id).slice(booted)).toEqual(['PATCH /vm {"state":"Paused"}']);

    // An orchestrator restart asks the VMM (GET /): the VM is still paused even if handles.json lost the flag.
    await cluster.kill9("orchestrator");
    const handlesFile = join(cluster.stateDir, "vms", vm.id, "handles.json");
    const stored = JSON.parse(readFileSync(handlesFile, "utf8")) as Record<string, unknown>;
    expect(stored["paused"]).toBe(true);
    delete stored["paused"];
    writeFileSync(handlesFile, JSON.stringify(stored));
    await cluster.start("orchestrator");
    expect(await show("pz")).toMatchObject({ state: "VM_STATE_PAUSED", pid: vm.pid });
    expect(requests(vm.id).slice(booted)).toEqual(['PATCH /vm {"state":"Paused"}', "GET /"]);

    const resumed = await cluster.cli(["vm", "resume", "pz"]);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stdout).toMatch(/^pz\s+starting\s/m); // the fake serves no SSH: it never gets past starting
    expect(requests(vm.id).slice(-1)).toEqual(['PATCH /vm {"state":"Resumed"}']);
    const twice = await cluster.cli(["vm", "resume", "pz"]);
    expect([twice.code, twice.stderr]).toEqual([1, expect.stringMatching(/VM pz is not paused \(op-[0-9a-f]{12}\)/)]);
    const exec = await cluster.cli(["vm", "ssh", "pz", "--print"]);
    expect(exec.code, exec.stderr).toBe(0);

    await cluster.cli(["vm", "delete", "pz"]);
  }, 180_000);

  it("stop of a paused VM resumes it, then shuts the guest down gracefully; a forced stop kills it paused", async () => {
    for (const name of ["ps", "pk"]) {
      const created = await cluster.cli(["vm", "create", "--name", name, "--image", "tiny", "--no-ssh-wait"]);
      expect(created.code, created.stderr).toBe(0);
      expect((await cluster.cli(["vm", "pause", name])).code).toBe(0);
    }
    const ps = await show("ps");
    const stopped = await cluster.cli(["vm", "stop", "ps"]);
    expect(stopped.code, stopped.stderr).toBe(0);
    expect((await show("ps")).state).toBe("VM_STATE_STOPPED");
    expect(requests(ps.id).filter((r) => r.startsWith("PATCH"))).toEqual([
      'PATCH /vm {"state":"Paused"}',
      'PATCH /vm {"state":"Resumed"}',
    ]);
    // The fake VMM's own log: the guest was resumed, then shut down gracefully (Ctrl-Alt-Del: this kernel's initrd
    // has no guest kit), not killed.
    const vmmLog = (await cluster.cli(["vm", "logs", "ps", "--vmm"])).stdout;
    const events = [...vmmLog.matchAll(/^fake-vmm: (\S+)/gm)].map((m) => m[1]);
    expect(events.slice(events.indexOf("paused"))).toEqual(["paused", "resumed", "ctrl-alt-del", "guest-shutdown"]);

    const pk = await show("pk");
    const killed = await cluster.cli(["vm", "stop", "pk", "--force"]);
    expect(killed.code, killed.stderr).toBe(0);
    expect((await show("pk")).state).toBe("VM_STATE_STOPPED");
    expect(requests(pk.id).filter((r) => r.startsWith("PATCH"))).toEqual(['PATCH /vm {"state":"Paused"}']);

    const notRunning = await cluster.cli(["vm", "pause", "pk"]);
    expect([notRunning.code, notRunning.stderr]).toEqual([1, expect.stringMatching(/VM pk is not running/)]);
    for (const name of ["ps", "pk"]) expect((await cluster.cli(["vm", "delete", name])).code).toBe(0);
  }, 180_000);

  it("stop --save has Firecracker snapshot the paused guest; start loads it instead of booting; a snapshot it refuses boots cold", async () => {
    const created = await cluster.cli(["vm", "create", "--name", "sv", "--image", "tiny", "--no-ssh-wait"]);
    expect(created.code, created.stderr).toBe(0);
    const vm = await show("sv");
    const saved = join(cluster.stateDir, "vms", vm.id, "saved");
    let seen = requests(vm.id).length;
    const since = () => {
      const all = requests(vm.id);
      const fresh = all.slice(seen);
      seen = all.length;
      return fresh.filter((r) => !r.startsWith("GET"));
    };

    const stopped = await cluster.cli(["vm", "stop", "sv", "--save"]);
    expect(stopped.code, stopped.stderr).toBe(0);
    expect(stopped.stderr).toMatch(/\n  save-state\s+done/);
    expect(since()).toEqual([
      'PATCH /vm {"state":"Paused"}',
      `PUT /snapshot/create ${JSON.stringify({ snapshot_type: "Full", snapshot_path: join(saved, "vmstate"), mem_file_path: join(saved, "memory") })}`,
    ]);
    expect((await show("sv")).state).toBe("VM_STATE_STOPPED");
    // vm show says so, and when.
    const shown = await cluster.cli(["vm", "show", "sv"]);
    expect(shown.stdout).toMatch(
      /^saved:\s+\d{4}-\d\d-\d\dT[\d:.]+Z \(memory saved: the next start resumes from it\)$/m,
    );
    const [json] = JSON.parse((await cluster.cli(["vm", "show", "sv", "--json"])).stdout) as object[];
    expect(json).toHaveProperty("savedStateTime");
    // Firecracker (as the owner) wrote the state; saved.json, written last, says what it fits.
    expect(readdirSync(saved).sort()).toEqual(["memory", "saved.json", "vmstate"]);
    expect(statSync(join(saved, "memory"))).toMatchObject({ uid: OWNER, size: 1024 * 1024 * 1024 });
    expect(JSON.parse(readFileSync(join(saved, "saved.json"), "utf8"))).toMatchObject({
      vmm: "firecracker",
      vcpu: 2,
      memoryMib: 1024,
    });

    const started = await cluster.cli(["vm", "start", "sv", "--no-ssh-wait"]);
    expect(started.code, started.stderr).toBe(0);
    expect(started.stderr).toMatch(/\n  resume-vmm\s+done \([\d.]+ s\): resumed from the state saved at /);
    expect(started.stderr).not.toMatch(/configure-vmm|start-vmm/);
    expect(since()).toEqual([
      `PUT /snapshot/load ${JSON.stringify({ snapshot_path: join(saved, "vmstate"), mem_backend: { backend_type: "File", backend_path: join(saved, "memory") }, resume_vm: true })}`,
    ]);
    expect(existsSync(saved)).toBe(false);
    expect((await show("sv")).state).toBe("VM_STATE_STARTING");
    expect((await cluster.cli(["vm", "show", "sv"])).stdout).not.toMatch(/^saved:/m);

    // A saved state the VMM refuses: the try is undone, the state dropped, and the VM boots cold.
    expect((await cluster.cli(["vm", "stop", "sv", "--save"])).code).toBe(0);
    writeFileSync(join(saved, "vmstate"), "not a snapshot");
    since();
    const cold = await cluster.cli(["vm", "start", "sv", "--no-ssh-wait"]);
    expect(cold.code, cold.stderr).toBe(0);
    expect(cold.stderr).toMatch(
      /\n  resume-vmm\s+done \([\d.]+ s\): could not resume from the saved state \(firecracker PUT \/snapshot\/load: Load snapshot error: .*\): booting cold instead\n/,
    );
    expect(cold.stderr).toMatch(/\n  start-vmm\s+done/);
    // The refused load is not recorded (the fake records what it accepted): a cold boot's requests follow.
    expect(since().map((r) => r.split(" ").slice(0, 2).join(" "))).toEqual([
      "PUT /machine-config",
      "PUT /boot-source",
      "PUT /drives/root",
      "PUT /drives/work",
      "PUT /network-interfaces/eth0",
      "PUT /vsock",
      "PUT /actions",
    ]);
    expect(existsSync(saved)).toBe(false);

    // Deleting a VM with a saved state removes it with the rest.
    expect((await cluster.cli(["vm", "stop", "sv", "--save"])).code).toBe(0);
    expect(existsSync(saved)).toBe(true);
    expect((await cluster.cli(["vm", "delete", "sv"])).code).toBe(0);
    expect(existsSync(join(cluster.stateDir, "vms", vm.id))).toBe(false);
  }, 180_000);
});
