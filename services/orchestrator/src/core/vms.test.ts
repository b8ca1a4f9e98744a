/**
 * The VM lifecycle over a real SQLite store and real files, with the host
 * (privileged helper), the VMM API and the guest disk builder scripted: they
 * record every call and keep a model of what exists on the host, so a test
 * can show that a failed create leaves the host exactly as it found it.
 * (test/integration/vm-lifecycle.test.ts runs the same against the real helper.)
 */
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Writable } from "node:stream";
import { BangerError, FailedPreconditionError, UnavailableError, createLogger } from "@banger/common";
import { describe, expect, it } from "vitest";
import { DEFAULT_CONFIG, type BangerConfig } from "../config/index.js";
import { insertImage, insertKernel } from "../store/index.js";
import { image, kernel, useStore, useTempDir } from "../../test-support/store.js";
import type { HostPort, QemuMachine } from "./host.js";
import { dnsCapability, natCapability } from "./capabilities.js";
import { createImageCatalog, type PullerPort } from "./images.js";
import { createKernelCatalog } from "./kernels.js";
import { createOperations } from "./operations.js";
import { createVmmPorts, type FirecrackerApi, type QmpApi } from "../vmm/drivers.js";
import { createVmService, type GuestPort } from "./vms.js";

const store = useStore();
const tempDir = useTempDir();
const logger = createLogger({ service: "orchestrator", destination: new Writable({ write: (_c, _e, d) => d() }) });
// Firecracker configured: what the scripted helper and the fake VMM speak ("auto" would ask this machine).
const CONFIG: BangerConfig = { ...DEFAULT_CONFIG, vmm: "firecracker", source: { path: "/nonexistent", exists: false } };

// In the order they first start: the work disk is built and the tap taken while the root disk is made and checked.
const CREATE_STAGES = [
  "resolve-image",
  "reserve",
  "work-disk",
  "tap",
  "root-disk",
  "fsck",
  "guest-files",
  "launch-vmm",
  "configure-vmm",
  "start-vmm",
  "wait-ssh",
  "network",
];

/** What the scripted host holds, as the helper's inventory would list it. */
interface HostModel {
  bridges: Set<string>;
  pool: Set<string>;
  taps: Set<string>;
  loops: Map<string, string>;
  nat: Set<string>;
  vmms: Set<string>;
  /** VM ids with a dm-snapshot. */
  snapshots: Set<string>;
  /** QEMU machines launched, by VM id. */
  qemu: Map<string, QemuMachine>;
  /** Control sockets of VMMs holding their guest paused. */
  paused: Set<string>;
}

interface Script {
  failAt?: string;
  /** The host has device-mapper: VMs get dm-snapshot root disks. */
  deviceMapper?: boolean;
  delayMs?: number;
  /** No registry can be reached (a machine offline): every pull fails REGISTRY_UNREACHABLE. */
  offline?: boolean;
  /** The image's root filesystem was found clean (guest port cleanRootfs). */
  imageClean?: boolean;
  /** The guest's SSH never answers: the wait for it ends only when it is told to stop (then `stopped`). */
  sshSilent?: { stopped: boolean };
  /** Work disks banger's files were written onto again (guest port refreshWorkDisk), in order. */
  refreshed?: string[];
}

/** How many scripted helper calls were in flight at once, at most. */
const concurrency = { now: 0, max: 0 };

function scriptedHost(model: HostModel, script: Script, calls: string[]): HostPort {
  let loopCount = 0;
  let poolCount = 0;
  const step = async (name: string) => {
    calls.push(name);
    concurrency.max = Math.max(concurrency.max, ++concurrency.now);
    if (script.delayMs) await new Promise((r) => setTimeout(r, script.delayMs)).finally(() => concurrency.now--);
    else concurrency.now--;
    if (script.failAt === name) {
      throw new FailedPreconditionError(`helper refused ${name}`, { receivedReason: "SCRIPTED_FAILURE" });
    }
  };
  return {
    inventory: () =>
      Promise.resolve({
        taps: [...model.taps].map((vmId) => ({ name: `bgr-${vmId.slice(0, 11)}`, vmId })),
        poolTaps: [...model.pool].map((name) => ({ name, ownerUid: 1000 })),
        ownerUid: 1000,
        natRules: [...model.nat].map((vmId) => ({ vmId })),
        loops: [...model.loops].map(([device, backingFile]) => ({ device, backingFile })),
        vmms: [...model.vmms].map((vmId) => ({ vmId, pid: 999_999, startTime: new Date(0) })),
        snapshots: [...model.snapshots].map((vmId) => ({ vmId })),
      }),
    features: () =>
      Promise.resolve({
        tun: true,
        bridge: true,
        nftables: true,
        loop: true,
        deviceMapper: script.deviceMapper ?? false,
        resolved: false,
        kvm: false,
        kernelRelease: "6.1.0-test",
      }),
    async ensureBridge(name) {
      await step("ensureBridge");
      model.bridges.add(name);
    },
    async createTap(vmId, _bridge, _scope, { fromPool, guestAddress } = {}) {
      await step("createTap");
      if (fromPool !== undefined && !model.pool.delete(fromPool)) throw new Error(`${fromPool} is not in the pool`);
      if (!guestAddress) throw new Error(`no guest address given with the tap of ${vmId}`);
      model.taps.add(vmId);
      return `bgr-${vmId.slice(0, 11)}`;
    },
    async createPoolTap() {
      await step("createPoolTap");
      const name = `bgr-p${String(poolCount++).padStart(10, "0")}`;
      model.pool.add(name);
      return name;
    },
    deletePoolTap(name) {
      model.pool.delete(name);
      return Promise.resolve();
    },
    deleteTap(vmId) {
      calls.push("deleteTap");
      model.taps.delete(vmId);
      return Promise.resolve();
    },
    configureResolver: () => Promise.resolve(),
    async enableNat(vmId) {
      await step("enableNat");
      model.nat.add(vmId);
    },
    disableNat(vmId) {
      calls.push("disableNat");
      model.nat.delete(vmId);
      return Promise.resolve();
    },
    async attachLoop(path) {
      await step("attachLoop");
      const device = `/dev/loop${loopCount++}`;
      model.loops.set(device, path);
      return device;
    },
    detachLoop(device) {
      calls.push("detachLoop");
      model.loops.delete(device);
      return Promise.resolve();
    },
    async checkFilesystem() {
      await step("checkFilesystem");
      return 0;
    },
    async writeGuestFiles() {
      await step("writeGuestFiles");
    },
    async launchFirecracker(vmId) {
      await step("launchFirecracker");
      model.vmms.add(vmId);
      return {
        pid: 999_999,
        startTime: new Date(),
        controlSocket: `/run/banger/vms/${vmId}/firecracker.sock`,
        logPath: `/run/banger/vms/${vmId}/vmm.log`,
        consolePath: `/run/banger/vms/${vmId}/console.log`,
      };
    },
    async launchQemu(vmId, machine) {
      await step("launchQemu");
      model.vmms.add(vmId);
      model.qemu.set(vmId, machine);
      return {
        pid: 999_999,
        startTime: new Date(),
        controlSocket: `/run/banger/vms/${vmId}/qmp.sock`,
        logPath: `/run/banger/vms/${vmId}/vmm.log`,
        consolePath: `/run/banger/vms/${vmId}/console.log`,
      };
    },
    async createSnapshot(vmId, origin, cow) {
      await step("createSnapshot");
      if (!model.loops.has(origin) || !model.loops.has(cow)) throw new Error("LOOP_NOT_ATTACHED");
      model.snapshots.add(vmId);
      return `/dev/mapper/bgr-${vmId}-root`;
    },
    removeSnapshot(vmId) {
      calls.push("removeSnapshot");
      return Promise.resolve(model.snapshots.delete(vmId));
    },
    removeVmmFiles() {
      calls.push("removeVmmFiles");
      return Promise.resolve(true);
    },
    signalVmm(vmId) {
      calls.push("signalVmm");
      return Promise.resolve(model.vmms.delete(vmId));
    },
    vmmState(vmId) {
      const running = model.vmms.has(vmId);
      return Promise.resolve({ running, cpuTimeMs: running ? 1234 : 0, rssBytes: running ? 64 << 20 : 0 });
    },
  };
}

/** QMP of the scripted QEMU: the power button makes the guest (and QEMU) exit; stop and cont pause and resume it. */
function fakeQmp(script: Script, requests: string[], model: HostModel): (socket: string) => QmpApi {
  const { paused } = model;
  return (socket) => ({
    waitForSocket: () => Promise.resolve(),
    status: () => {
      requests.push("qmp query-status");
      return script.failAt === "query-status"
        ? Promise.reject(new FailedPreconditionError("qemu query-status: scripted", { reason: "VMM_API_ERROR" }))
        : Promise.resolve(
            paused.has(socket) ? { running: false, status: "paused" } : { running: true, status: "running" },
          );
    },
    powerdown: () => {
      requests.push("qmp system_powerdown");
      model.vmms.delete(socket.split("/").at(-2) ?? "");
      return Promise.resolve();
    },
    stop: () => {
      requests.push("qmp stop");
      paused.add(socket);
      return Promise.resolve();
    },
    cont: () => {
      requests.push("qmp cont");
      paused.delete(socket);
      return Promise.resolve();
    },
    migrate: () => Promise.reject(new Error("not scripted")),
    queryMigrate: () => Promise.reject(new Error("not scripted")),
    incoming: () => Promise.reject(new Error("not scripted")),
    setLink: () => Promise.reject(new Error("not scripted")),
  });
}

function fakeFirecracker(script: Script, requests: string[], model: HostModel): (socket: string) => FirecrackerApi {
  return (socket) => {
    const put = (what: string) => (body?: unknown) => {
      requests.push(`${what} ${JSON.stringify(body ?? {})}`);
      return script.failAt === what
        ? Promise.reject(new FailedPreconditionError(`firecracker PUT /${what}: scripted`, { reason: "VMM_API_ERROR" }))
        : Promise.resolve();
    };
    return {
      waitForSocket: () => Promise.resolve(),
      putMachineConfig: put("machine-config"),
      putBootSource: put("boot-source"),
      putDrive: put("drives"),
      putNetworkInterface: put("network-interfaces"),
      putVsock: put("vsock"),
      instanceStart: put("InstanceStart"),
      // The guest shuts down and its VMM exits.
      sendCtrlAltDel: () => {
        model.vmms.delete(socket.split("/").at(-2) ?? "");
        return put("SendCtrlAltDel")();
      },
      pause: put("vm Paused"),
      resume: put("vm Resumed"),
      createSnapshot: put("snapshot/create"),
      loadSnapshot: put("snapshot/load"),
      patchDrive: put("drives (patch)"),
      describeInstance: () => Promise.resolve({ id: "fake", state: "Running", vmmVersion: "1.8.0", appName: "x" }),
    };
  };
}

function scriptedGuest(script: Script): GuestPort {
  return {
    rootDiskFiles: (vm) => [
      { path: "/etc/hostname", content: Buffer.from(`${vm.name}\n`), mode: 0o644, uid: 0, gid: 0 },
    ],
    bootArgsIp: (vm) => `ip=${vm.guestIp}::172.30.0.1:255.255.255.0:${vm.name}:eth0:off`,
    prepareWorkDisk({ target }) {
      if (script.failAt === "prepareWorkDisk") return Promise.reject(new Error("mkfs failed"));
      writeFileSync(target, "work");
      return Promise.resolve();
    },
    growWorkDisk: () => Promise.resolve(),
    refreshWorkDisk(path) {
      if (script.failAt === "refreshWorkDisk") {
        return Promise.reject(
          new FailedPreconditionError("file_sync[0].source /home/me/gone does not exist", {
            reason: "FILE_SYNC_MISSING",
          }),
        );
      }
      script.refreshed?.push(path);
      return Promise.resolve();
    },
    // Not known clean unless a test says so: the create checks its root disk itself.
    cleanRootfs: () => Promise.resolve(script.imageClean ? "1:2:3:4:5" : undefined),
    waitForSsh: (_ip, _timeoutMs, signal) => {
      if (script.failAt === "waitForSsh") return Promise.reject(new Error("no SSH banner"));
      const silent = script.sshSilent;
      if (!silent) return Promise.resolve();
      return new Promise((_, reject) =>
        signal.addEventListener("abort", () => {
          silent.stopped = true;
          reject(new Error("stopped"));
        }),
      );
    },
  };
}

async function setup(script: Script = {}, config: BangerConfig = CONFIG) {
  const db = store().db;
  const stateDir = tempDir();
  const operations = createOperations({ db, logger });
  const pulls: string[] = [];
  // A puller that builds a catalog image: a rootfs file, and layer progress on the way.
  const puller: PullerPort = {
    identify: () => Promise.resolve({ version: "t", pid: 1, uid: 1, gid: 1, privilegesOk: true, privilegesDetail: "" }),
    pruneCache: () => Promise.resolve({ removedBlobs: 0, freedBytes: 0 }),
    async pull(request, _scope, onEvent) {
      pulls.push(request.reference);
      if (script.offline) {
        throw new UnavailableError("registry host registry-1.docker.io is unreachable: getaddrinfo EAI_AGAIN", {
          reason: "REGISTRY_UNREACHABLE",
        });
      }
      await onEvent({ kind: "stage", name: "layers", done: false, message: "" });
      await new Promise((r) => setTimeout(r, 30));
      await onEvent({ kind: "layer", index: 0, digest: "sha256:1", doneBytes: 10, totalBytes: 10, state: "applied" });
      writeFileSync(join(request.stagingDir, "rootfs.ext4"), "pulled rootfs");
      return {
        manifestDigest: `sha256:${"d".repeat(64)}`,
        platform: "linux/amd64",
        rootfsFile: "rootfs.ext4",
        rootfsBytes: 13,
        workSeedFile: "",
        workSeedBytes: 0,
        config: { entrypoint: [], cmd: [], env: [], user: "", workingDir: "" },
        canonicalReference: request.reference,
      };
    },
    buildTiny(request) {
      pulls.push("tiny");
      writeFileSync(join(request.stagingDir, "rootfs.ext4"), "tiny rootfs");
      return Promise.resolve({
        manifestDigest: `sha256:${"7".repeat(64)}`,
        platform: "linux/amd64",
        rootfsFile: "rootfs.ext4",
        rootfsBytes: 11,
        workSeedFile: "",
        workSeedBytes: 0,
        config: { entrypoint: [], cmd: [], env: [], user: "", workingDir: "" },
        canonicalReference: "",
      });
    },
  };
  const images = createImageCatalog({ db, stateDir, puller, operations, logger });
  const kernels = createKernelCatalog({ db, stateDir, operations, logger });
  await insertKernel(db, kernel({ name: "k", isDefault: true }));
  await insertImage(db, image({ name: "debian", defaultKernel: "k", workSeedBytes: 0 }));
  mkdirSync(images.dir("debian"), { recursive: true });
  writeFileSync(join(images.dir("debian"), "rootfs.ext4"), "rootfs");
  const model: HostModel = {
    bridges: new Set(),
    pool: new Set(),
    taps: new Set(),
    loops: new Map(),
    nat: new Set(),
    vmms: new Set(),
    snapshots: new Set(),
    qemu: new Map(),
    paused: new Set(),
  };
  const calls: string[] = [];
  const requests: string[] = [];
  const build = (names = dnsCapability(() => Promise.resolve({ name: "dns", ok: true, detail: "" }))) => ({
    names,
    vms: createVmService({
      db,
      logger,
      operations,
      stateDir,
      config,
      images,
      kernels,
      host: scriptedHost(model, script, calls),
      capabilities: [natCapability(scriptedHost(model, script, calls), "bgr0"), names],
      // banger's drivers over scripted VMM APIs, built as the composition root builds them.
      vmm: createVmmPorts(
        scriptedHost(model, script, calls),
        fakeFirecracker(script, requests, model),
        fakeQmp(script, requests, model),
      ),
      guest: scriptedGuest(script),
      runtimeDir: join(stateDir, "run"),
      ssh: {
        identityFile: () => Promise.resolve("/nonexistent/id_ed25519"),
        knownHostsFile: join(stateDir, "known_hosts"),
      },
    }),
  });
  const built = build();
  const { vms, names } = built;
  const create = (name: string, extra: { nat?: boolean; skipSshWait?: boolean; sshTimeoutMs?: number } = {}) =>
    vms.create(
      {
        name,
        image: "debian",
        kernel: "",
        vcpu: 0,
        memoryMib: 0,
        workDiskMib: 0,
        nat: extra.nat ?? false,
        skipSshWait: extra.skipSshWait ?? false,
        sshTimeoutMs: extra.sshTimeoutMs,
      },
      { signal: new AbortController().signal },
    );
  /** Another orchestrator over the same store, state directory and host: as after a restart. */
  const restarted = () => build();
  return { vms, names, operations, model, calls, requests, stateDir, create, restarted, pulls, images };
}

/** The warm pool is topped up in the background: waits (at most 5 s) until the host holds a full one. */
async function poolFull(model: HostModel): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (model.pool.size < CONFIG.network.tapPool && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
}

const vmDirs = (stateDir: string) => (existsSync(join(stateDir, "vms")) ? readdirSync(join(stateDir, "vms")) : []);

describe("VM create", () => {
  it("runs every stage in order, configures the VMM and leaves a running VM with its handles", async () => {
    const { vms, names, operations, model, requests, stateDir, create } = await setup();
    const op = await create("box", { nat: true });
    await operations.settled();
    const done = await operations.get(op.id);
    expect(done.state, JSON.stringify(done.error)).toBe("succeeded");
    expect(done.stages.map((s) => [s.name, s.state])).toEqual(CREATE_STAGES.map((s) => [s, "done"]));
    const vm = await vms.get("box");
    expect(vm).toMatchObject({ state: "running", guestIp: "172.30.0.2", vsockCid: 3, vcpu: 2, nat: true });
    expect(vm.mac).toMatch(/^02(:[0-9a-f]{2}){5}$/);
    expect(done.result).toMatchObject({ kind: "vm", vm: { name: "box", state: "running", guestIp: "172.30.0.2" } });
    expect([...model.taps, ...model.vmms, ...model.nat]).toEqual([vm.id, vm.id, vm.id]);
    expect(model.loops.size).toBe(0); // a clone is a file: the helper checks and writes it without a loop device
    expect(names.resolve("box")).toBe("172.30.0.2"); // the DNS capability's postStart
    expect(readdirSync(join(stateDir, "vms", vm.id)).sort()).toEqual(["handles.json", "root.ext4", "work.ext4"]);
    expect(requests).toEqual([
      'machine-config {"vcpuCount":2,"memSizeMib":1024,"smt":false}',
      expect.stringMatching(
        /^boot-source \{"kernelImagePath":".*\/kernels\/k\/vmlinux","bootArgs":"console=ttyS0 .* ip=172\.30\.0\.2::172\.30\.0\.1:255\.255\.255\.0:box:eth0:off banger\.id=[0-9a-f]{12}","initrdPath":".*\/kernels\/k\/initrd"\}$/,
      ),
      expect.stringMatching(/^drives \{"driveId":"root",.*root\.ext4","isRootDevice":true,"isReadOnly":false\}$/),
      expect.stringMatching(/^drives \{"driveId":"work",.*work\.ext4","isRootDevice":false,"isReadOnly":false\}$/),
      `network-interfaces {"ifaceId":"eth0","hostDevName":"bgr-${vm.id.slice(0, 11)}","guestMac":"${vm.mac}"}`,
      `vsock {"guestCid":3,"udsPath":"/run/banger/vms/${vm.id}/vsock.sock"}`,
      "InstanceStart {}",
    ]);
  });

  const failures: [string, string][] = [
    ["checkFilesystem", "fsck"],
    ["writeGuestFiles", "guest-files"],
    ["prepareWorkDisk", "work-disk"],
    ["ensureBridge", "tap"],
    ["createTap", "tap"],
    ["launchFirecracker", "launch-vmm"],
    ["boot-source", "configure-vmm"],
    ["InstanceStart", "start-vmm"],
    ["waitForSsh", "wait-ssh"],
    ["enableNat", "network"],
  ];
  it.each(failures)(
    "a failure in %s fails stage %s and leaves the host, the store and the state directory as they were",
    async (failAt, stage) => {
      const { vms, operations, model, stateDir, create } = await setup({ failAt });
      const op = await create("box", { nat: true });
      await operations.settled();
      const failed = await operations.get(op.id);
      expect(failed.state).toBe("failed");
      expect(failed.error?.stage).toBe(stage);
      expect(failed.stages.find((s) => s.name === stage)?.state).toBe("failed");
      expect(await vms.list()).toEqual([]);
      expect({ taps: [...model.taps], loops: [...model.loops], nat: [...model.nat], vmms: [...model.vmms] }).toEqual({
        taps: [],
        loops: [],
        nat: [],
        vmms: [],
      });
      expect(vmDirs(stateDir)).toEqual([]);
    },
  );

  it("leaves out the root disk's fsck when the image it copies was found clean, and says so", async () => {
    const { operations, calls, create } = await setup({ imageClean: true });
    const op = await create("box");
    await operations.settled();
    const done = await operations.get(op.id);
    expect(done.state, JSON.stringify(done.error)).toBe("succeeded");
    expect(done.stages.find((s) => s.name === "fsck")).toMatchObject({
      state: "done",
      message: "not needed: a fresh copy of image debian, which e2fsck found clean",
    });
    expect(calls).not.toContain("checkFilesystem");
    expect(calls).toContain("writeGuestFiles");
  });

  it("a guest whose SSH never answers fails wait-ssh SSH_TIMEOUT after its timeout, and the look for it stops", async () => {
    const sshSilent = { stopped: false };
    const { vms, operations, create } = await setup({ sshSilent });
    const op = await create("box", { sshTimeoutMs: 50 });
    await operations.settled();
    const failed = await operations.get(op.id);
    expect(failed.error).toMatchObject({ stage: "wait-ssh", reason: "SSH_TIMEOUT" });
    expect(failed.error?.message).toMatch(/did not answer within 50 ms/);
    expect(sshSilent.stopped).toBe(true);
    expect(await vms.list()).toEqual([]);
  });

  it("takes taps from a warm pool that it keeps topped up", async () => {
    const { operations, model, create } = await setup();
    await create("one");
    await operations.settled();
    await poolFull(model);
    expect(model.pool.size).toBe(CONFIG.network.tapPool);
    const second = await create("two");
    await operations.settled();
    await poolFull(model);
    const tapStage = (await operations.get(second.id)).stages.find((s) => s.name === "tap");
    expect(tapStage?.message).toMatch(/^tap bgr-\S+ from the warm pool$/);
    expect(model.pool.size).toBe(CONFIG.network.tapPool);
    expect(model.taps.size).toBe(2);
  });

  it("pulls a catalog image that is not local in stage resolve-image, once for two creates", async () => {
    const { vms, operations, pulls, images, create } = await setup();
    const createFrom = (name: string) =>
      vms.create({ ...base(name), image: "alpine" }, { signal: new AbortController().signal });
    const ops = [await createFrom("a1"), await createFrom("a2")];
    await operations.settled();
    for (const op of ops) {
      const done = await operations.get(op.id);
      expect(done.state, JSON.stringify(done.error)).toBe("succeeded");
      expect(done.stages[0]?.name).toBe("resolve-image");
    }
    expect(pulls).toEqual(["docker.io/library/alpine:3.20"]);
    expect((await images.get("alpine")).usedBy).toEqual(["a1", "a2"]);
    void create;
  });

  it("naming no image on a machine offline, boots the built-in tiny and says why; naming the image fails", async () => {
    const { vms, operations, pulls } = await setup({ offline: true }, { ...CONFIG, defaultImage: "alpine" });
    const scope = { signal: new AbortController().signal };
    const unnamed = await vms.create({ ...base("offline"), image: "" }, scope);
    await operations.settled();
    const done = await operations.get(unnamed.id);
    expect(done.state, JSON.stringify(done.error)).toBe("succeeded");
    expect(done.stages.find((s) => s.name === "resolve-image")?.message).toMatch(
      /^the default image alpine could not be pulled \(registry host registry-1\.docker\.io is unreachable: .*\): using the built-in image tiny instead/,
    );
    expect((await vms.get("offline")).imageName).toBe("tiny");
    expect(pulls).toEqual(["docker.io/library/alpine:3.20", "tiny"]);

    const named = await vms.create({ ...base("named"), image: "alpine" }, scope);
    await operations.settled();
    expect(await operations.get(named.id)).toMatchObject({
      state: "failed",
      error: { reason: "REGISTRY_UNREACHABLE", stage: "resolve-image" },
    });
    expect((await vms.list()).map((vm) => vm.name)).toEqual(["offline"]);
  });

  it("ten creates in parallel get unique addresses and overlap in time", async () => {
    const { vms, operations, create } = await setup({ delayMs: 20 });
    concurrency.max = 0;
    const ops = await Promise.all(Array.from({ length: 10 }, (_, i) => create(`vm${i}`)));
    await operations.settled();
    const done = await Promise.all(ops.map((op) => operations.get(op.id)));
    expect(done.map((op) => op.state)).toEqual(Array(10).fill("succeeded"));
    const list = await vms.list();
    for (const key of ["guestIp", "mac", "vsockCid", "id"] as const) {
      expect(new Set(list.map((vm) => vm[key])).size).toBe(10);
    }
    // The helper had calls of many creates in flight at once: the slow stages overlapped (one global lock would give 1).
    expect(concurrency.max).toBeGreaterThanOrEqual(5);
  });

  it("names a VM created without a name: readable, valid and unique, also among creates under way", async () => {
    const { vms, operations, create } = await setup({ delayMs: 20 });
    const ops = await Promise.all(Array.from({ length: 6 }, () => create("")));
    await operations.settled();
    const names = ops.map((op) => op.target);
    for (const name of names) expect(name).toMatch(/^[a-z]+-[a-z]+(-[0-9a-f]{4})?$/);
    expect(new Set(names).size).toBe(6);
    expect((await vms.list()).map((vm) => vm.name).sort()).toEqual([...names].sort());
  });

  it("refuses a taken name, a bad name, bad sizes and an unknown image before any operation", async () => {
    const { operations, create, vms } = await setup();
    await create("box");
    await operations.settled();
    const reasons = [];
    for (const attempt of [
      () => create("box"),
      () => create("Bad_Name"),
      () => vms.create({ ...base("x"), vcpu: 64 }, scope()),
      () => vms.create({ ...base("x"), memoryMib: 64 }, scope()),
      () => vms.create({ ...base("x"), image: "nope" }, scope()),
    ]) {
      reasons.push(
        await attempt().then(
          () => "none",
          (e: unknown) => (e instanceof BangerError ? `${e.kind} ${e.reason}` : String(e)),
        ),
      );
    }
    expect(reasons).toEqual([
      "already-exists VM_NAME_TAKEN",
      "invalid-argument INVALID_VM_NAME",
      "invalid-argument INVALID_VCPU",
      "invalid-argument INVALID_MEMORY",
      "not-found IMAGE_NOT_FOUND",
    ]);
    expect((await operations.list({ limit: 10 })).length).toBe(1);
  });
});

const scope = () => ({ signal: new AbortController().signal });
const base = (name: string) => ({
  name,
  image: "debian",
  kernel: "",
  vcpu: 0,
  memoryMib: 0,
  workDiskMib: 0,
  nat: false,
  skipSshWait: false,
  sshTimeoutMs: undefined,
});

describe("VM lifecycle", () => {
  it("delete of a VM whose create is running cancels the create, which unwinds; nothing is left", async () => {
    const { vms, operations, model, stateDir, create } = await setup({ delayMs: 40 });
    const creating = await create("box", { nat: true });
    // Let it get a few stages in.
    while (!(await operations.get(creating.id)).stages.some((s) => s.name === "root-disk")) {
      await new Promise((r) => setTimeout(r, 5));
    }
    const { existed, operation } = await vms.delete("box");
    expect(existed).toBe(true);
    await operations.settled();
    expect((await operations.get(creating.id)).state).toBe("cancelled");
    expect((await operations.get(operation.id)).state).toBe("succeeded");
    expect(await vms.list()).toEqual([]);
    expect({ taps: [...model.taps], loops: [...model.loops], nat: [...model.nat], vmms: [...model.vmms] }).toEqual({
      taps: [],
      loops: [],
      nat: [],
      vmms: [],
    });
    expect(vmDirs(stateDir)).toEqual([]);
  });

  it("writes banger's files onto the work disk again at each start and restart; a failure is a note, not a failed start", async () => {
    const refreshed: string[] = [];
    const script: Script = { refreshed };
    const { vms, operations, stateDir, create } = await setup(script);
    await create("box");
    await operations.settled();
    const workDisk = join(stateDir, "vms", (await vms.get("box")).id, "work.ext4");
    expect(refreshed).toEqual([]); // the create wrote them

    await vms.stop("box", { timeoutMs: 100, force: true });
    await operations.settled();
    await vms.start("box", { sshTimeoutMs: undefined, skipSshWait: false });
    await operations.settled();
    await vms.restart("box", { timeoutMs: 100, force: true, skipSshWait: false });
    await operations.settled();
    expect(refreshed).toEqual([workDisk, workDisk]);

    await vms.stop("box", { timeoutMs: 100, force: true });
    await operations.settled();
    script.failAt = "refreshWorkDisk";
    const started = await vms.start("box", { sshTimeoutMs: undefined, skipSshWait: false });
    await operations.settled();
    const done = await operations.get(started.id);
    expect(done.state).toBe("succeeded");
    expect(done.stages[0]).toMatchObject({ name: "work-files", state: "done" });
    expect(done.stages[0]?.message).toMatch(
      /^banger's files were not written again \(.*gone does not exist, FILE_SYNC_MISSING\)/,
    );
    expect((await vms.get("box")).state).toBe("running");
  });

  it("stop, start, restart, set and delete round trips, with the right codes for no-op requests", async () => {
    const { vms, names, operations, model, requests, stateDir, create } = await setup();
    await create("box");
    await operations.settled();
    const id = (await vms.get("box")).id;

    const startRunning = await vms
      .start("box", { sshTimeoutMs: undefined, skipSshWait: false })
      .catch((e: BangerError) => e.reason);
    expect(startRunning).toBe("VM_RUNNING");

    await vms.stop("box", { timeoutMs: 100, force: true });
    await operations.settled();
    expect((await vms.get("box")).state).toBe("stopped");
    expect([...model.vmms, ...model.taps]).toEqual([]);
    expect(names.resolve("box")).toBeUndefined(); // a stopped VM has no name
    expect(await vms.stop("box", { timeoutMs: 100, force: true }).catch((e: BangerError) => e.reason)).toBe(
      "VM_NOT_RUNNING",
    );

    // Stopped: vcpu and memory apply at once; a running VM gets them at its next start.
    expect(await vms.set("box", { vcpu: 4 })).toMatchObject({ vcpu: 4, pendingChanges: {} });
    await vms.start("box", { sshTimeoutMs: undefined, skipSshWait: false });
    await operations.settled();
    expect((await vms.get("box")).state).toBe("running");
    expect(requests.filter((r) => r.startsWith("machine-config")).at(-1)).toContain('"vcpuCount":4');
    expect(await vms.set("box", { memoryMib: 2048 })).toMatchObject({
      memoryMib: 1024,
      pendingChanges: { memory_mib: 2048 },
    });
    await vms.restart("box", { timeoutMs: 100, force: true, skipSshWait: false });
    await operations.settled();
    expect(await vms.get("box")).toMatchObject({ state: "running", memoryMib: 2048, pendingChanges: {} });
    expect(requests.filter((r) => r.startsWith("machine-config")).at(-1)).toContain('"memSizeMib":2048');
    expect(await vms.set("box", { workDiskMib: 16 }).catch((e: BangerError) => e.reason)).toBe("DISK_SHRINK");
    expect(await vms.set("box", {}).catch((e: BangerError) => e.reason)).toBe("NOTHING_TO_CHANGE");

    const deleted = await vms.delete("box");
    expect(deleted.existed).toBe(true);
    await operations.settled();
    expect(await vms.list()).toEqual([]);
    expect([...model.vmms, ...model.taps, ...model.nat]).toEqual([]);
    expect(existsSync(join(stateDir, "vms", id))).toBe(false);
    expect(await vms.delete("box")).toMatchObject({ existed: false });
  });

  it("a saved state that no longer fits the VM (vm set since) is dropped at start, with why, and the VM boots cold", async () => {
    const { vms, operations, requests, stateDir, create } = await setup();
    await create("box");
    await operations.settled();
    const id = (await vms.get("box")).id;
    await vms.stop("box", { timeoutMs: 100, force: false, save: true });
    await operations.settled();
    expect(requests.slice(-2).map((r) => r.split(" ")[0])).toEqual(["vm", "snapshot/create"]);
    expect(readdirSync(join(stateDir, "vms", id, "saved"))).toEqual(["saved.json"]); // the scripted VMM writes none

    await vms.set("box", { memoryMib: 2048 });
    const op = await vms.start("box", { sshTimeoutMs: undefined, skipSshWait: false });
    await operations.settled();
    const started = await operations.get(op.id);
    expect(started.stages.find((s) => s.name === "resume-vmm")?.message).toBe(
      "the saved state does not fit the VM any more (memory 1024 → 2048 MiB): booting cold",
    );
    expect(started.stages.map((s) => s.name)).toContain("start-vmm");
    expect(requests.at(-1)).toMatch(/^InstanceStart/);
    expect(existsSync(join(stateDir, "vms", id, "saved"))).toBe(false);
    expect((await vms.get("box")).state).toBe("running");
  });
});

describe("root-disk strategy dm-snapshot (scripted helper: this machine has no device-mapper)", () => {
  const leftovers = (model: HostModel) => ({
    taps: [...model.taps],
    loops: [...model.loops],
    snapshots: [...model.snapshots],
    vmms: [...model.vmms],
  });
  const nothing = { taps: [], loops: [], snapshots: [], vmms: [] };

  it("boots from a snapshot over the image with a sparse COW file, releases it at stop and makes it again at start", async () => {
    console.log("FAKE: device-mapper is scripted (the helper's dm calls are a model); see privileged-disk tests");
    const { vms, operations, model, requests, stateDir, create } = await setup({ deviceMapper: true });
    const op = await create("box");
    await operations.settled();
    const done = await operations.get(op.id);
    expect(done.state, JSON.stringify(done.error)).toBe("succeeded");
    const vm = await vms.get("box");
    expect(vm.rootDiskStrategy).toBe("dm-snapshot");
    expect(done.result).toMatchObject({ kind: "vm", vm: { rootDiskStrategy: "dm-snapshot" } });
    // The image read-only under the snapshot, the VM's COW file under it read-write; no copy of the image.
    expect([...model.loops.values()]).toEqual([
      join(stateDir, "images", "debian", "rootfs.ext4"),
      join(stateDir, "vms", vm.id, "root.cow"),
    ]);
    expect([...model.snapshots]).toEqual([vm.id]);
    expect(readdirSync(join(stateDir, "vms", vm.id)).sort()).toEqual(["handles.json", "root.cow", "work.ext4"]);
    expect(statSync(join(stateDir, "vms", vm.id, "root.cow")).blocks).toBe(0); // sparse
    expect(requests.find((r) => r.includes('"driveId":"root"'))).toContain(
      `"pathOnHost":"/dev/mapper/bgr-${vm.id}-root"`,
    );

    await vms.stop("box", { timeoutMs: 1000, force: false });
    await operations.settled();
    expect(leftovers(model)).toEqual(nothing);

    const started = await vms.start("box", { sshTimeoutMs: undefined, skipSshWait: false });
    await operations.settled();
    const start = await operations.get(started.id);
    expect(start.stages.map((s) => s.name)).toEqual([
      "work-files",
      "root-disk",
      "tap",
      "launch-vmm",
      "configure-vmm",
      "start-vmm",
      "wait-ssh",
      "network",
    ]);
    expect([...model.snapshots]).toEqual([vm.id]);
    expect(await vms.promote("box", "img").catch((e: BangerError) => e.reason)).toBe("VM_RUNNING");

    await vms.delete("box");
    await operations.settled();
    expect(leftovers(model)).toEqual(nothing);
    expect(vmDirs(stateDir)).toEqual([]);
  });

  it.each([
    ["attachLoop", "root-disk"],
    ["createSnapshot", "root-disk"],
    ["checkFilesystem", "fsck"],
    ["launchFirecracker", "launch-vmm"],
    ["waitForSsh", "wait-ssh"],
  ])("a failure in %s fails stage %s and releases the snapshot and both loops", async (failAt, stage) => {
    const { vms, operations, model, stateDir, create } = await setup({ failAt, deviceMapper: true });
    const op = await create("box");
    await operations.settled();
    expect((await operations.get(op.id)).error?.stage).toBe(stage);
    expect(await vms.list()).toEqual([]);
    expect(leftovers(model)).toEqual(nothing);
    expect(vmDirs(stateDir)).toEqual([]);
  });

  it("at start-up, a dm-snapshot VM whose VMM died gets its snapshot and both loops released", async () => {
    const { vms, operations, model, create, restarted } = await setup({ deviceMapper: true });
    await create("box");
    await operations.settled();
    model.vmms.delete((await vms.get("box")).id);
    const { vms: after } = restarted();
    await after.recover();
    expect((await after.get("box")).state).toBe("stopped");
    expect(leftovers(model)).toEqual(nothing);
  });

  it("a failed start releases the snapshot it made", async () => {
    const script: Script = { deviceMapper: true };
    const { vms, operations, model, create } = await setup(script);
    await create("box");
    await operations.settled();
    await vms.stop("box", { timeoutMs: 1000, force: true });
    await operations.settled();
    script.failAt = "launchFirecracker";
    const started = await vms.start("box", { sshTimeoutMs: undefined, skipSshWait: false });
    await operations.settled();
    expect((await operations.get(started.id)).error?.stage).toBe("launch-vmm");
    expect(leftovers(model)).toEqual(nothing);
    expect((await vms.get("box")).state).toBe("failed");
  });
});

describe("VMM driver qemu-microvm", () => {
  const QEMU: BangerConfig = { ...CONFIG, vmm: "qemu-microvm" };

  it("launches QEMU with the whole machine, checks it runs over QMP, and stops it with the power button", async () => {
    const { vms, operations, model, requests, stateDir, create } = await setup({}, QEMU);
    const op = await create("box");
    await operations.settled();
    const done = await operations.get(op.id);
    expect(done.state, JSON.stringify(done.error)).toBe("succeeded");
    expect(done.stages.map((s) => s.name)).toEqual(CREATE_STAGES);
    const vm = await vms.get("box");
    expect(vm.vmm).toBe("qemu-microvm");
    expect(model.qemu.get(vm.id)).toEqual({
      vcpu: 2,
      memoryMib: 1024,
      kernelPath: join(stateDir, "kernels", "k", "vmlinux"),
      initrdPath: join(stateDir, "kernels", "k", "initrd"),
      bootArgs: `console=ttyS0 reboot=t panic=1 root=/dev/vda rw ip=${vm.guestIp}::172.30.0.1:255.255.255.0:box:eth0:off banger.id=${vm.id}`,
      rootDisk: join(stateDir, "vms", vm.id, "root.ext4"),
      workDisk: join(stateDir, "vms", vm.id, "work.ext4"),
      mac: vm.mac,
      kvm: false, // the scripted host has no KVM: TCG
      incoming: false,
    });
    expect(requests).toEqual(["qmp query-status"]); // no Firecracker API calls
    await vms.stop("box", { timeoutMs: 1000, force: false });
    await operations.settled();
    expect(requests.at(-1)).toBe("qmp system_powerdown");
    expect([...model.vmms, ...model.taps]).toEqual([]);
    expect((await vms.get("box")).state).toBe("stopped");
  });

  it("pauses with QMP stop and resumes with cont; a restart finds it paused by asking QMP; stop resumes it first", async () => {
    const { vms, operations, requests, create, restarted } = await setup({}, QEMU);
    await create("box");
    await operations.settled();
    expect((await vms.pause("box")).state).toBe("paused");
    expect(requests.at(-1)).toBe("qmp stop");
    await expect(vms.guestTarget("box")).rejects.toMatchObject({ reason: "VM_PAUSED" });
    await expect(vms.pause("box")).rejects.toMatchObject({ reason: "VM_PAUSED" });

    const { vms: after } = restarted();
    await after.recover();
    expect((await after.get("box")).state).toBe("paused");
    expect(requests.at(-1)).toBe("qmp query-status");
    expect((await after.resume("box")).state).toBe("running");
    await expect(after.resume("box")).rejects.toMatchObject({ reason: "VM_NOT_PAUSED" });
    expect(requests.at(-1)).toBe("qmp cont");

    await after.pause("box");
    await after.stop("box", { timeoutMs: 1000, force: false });
    await operations.settled();
    expect(requests.slice(-3)).toEqual(["qmp stop", "qmp cont", "qmp system_powerdown"]);
    expect((await after.get("box")).state).toBe("stopped");
    await expect(after.pause("box")).rejects.toMatchObject({ reason: "VM_NOT_RUNNING" });
  });

  it("a machine QMP cannot confirm fails configure-vmm and unwinds", async () => {
    const { vms, operations, model, stateDir, create } = await setup({ failAt: "query-status" }, QEMU);
    const op = await create("box");
    await operations.settled();
    const failed = await operations.get(op.id);
    expect(failed.error?.stage).toBe("configure-vmm");
    expect(failed.error?.message).toContain("qemu query-status: scripted");
    expect(await vms.list()).toEqual([]);
    expect([...model.vmms, ...model.taps, ...model.loops]).toEqual([]);
    expect(vmDirs(stateDir)).toEqual([]);
  });
});

describe("VM recovery at start-up", () => {
  it("keeps a VM whose VMM runs, stops one whose VMM died, and removes a half-made VM and orphans", async () => {
    const { vms, operations, model, stateDir, create, restarted } = await setup();
    for (const name of ["alive", "dead", "half"]) await create(name);
    await operations.settled();
    const [alive, dead, half] = [await vms.get("alive"), await vms.get("dead"), await vms.get("half")];
    // The restart: dead's VMM died meanwhile, half's create was cut off, and a VM that is gone left a tap.
    model.vmms.delete(dead.id);
    writeFileSync(join(stateDir, "vms", half.id, "creating"), "op-000000000001");
    model.loops.set("/dev/loop9", join(stateDir, "vms", half.id, "root.ext4"));
    model.taps.add("gone0000000");

    const { vms: after, names: afterNames } = restarted();
    await after.recover();
    expect((await after.list()).map((vm) => [vm.name, vm.state])).toEqual([
      ["alive", "running"],
      ["dead", "stopped"],
    ]);
    expect(afterNames.resolve("alive")).toBe(alive.guestIp);
    expect(afterNames.resolve("dead")).toBeUndefined();
    expect([...model.taps]).toEqual([alive.id]);
    expect([...model.vmms]).toEqual([alive.id]);
    expect([...model.loops]).toEqual([]);
    expect(vmDirs(stateDir).sort()).toEqual([alive.id, dead.id].sort());
    expect(existsSync(join(stateDir, "vms", dead.id, "handles.json"))).toBe(false);
  });
});
