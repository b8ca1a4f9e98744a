import { execFileSync, spawn } from "node:child_process";
import {
  chmodSync,
  chownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { get } from "node:http";
import { connect } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { HelperConfig } from "../config.js";
import { readCmdline, readCredentials, readStat } from "../host/proc.js";
import { tapName } from "../validate/ids.js";
import { hostPorts } from "../ports.js";
import {
  createVmmOps,
  firecrackerArgv,
  qemuArgv,
  vmmStartDate,
  vmmStartTimeFromDate,
  type QemuMachine,
  type VmmOps,
} from "./vmm.js";

const FAKE_VMM = fileURLToPath(new URL("../../test-fixtures/fake-vmm.mjs", import.meta.url));
const NOBODY = 65534;
/** What a launch runs on the host: the log relays (busybox), kill to signal as the owner, ps to look. */
const HAVE_VMM_TOOLS = requireTools("VMM launches", ["/bin/busybox", "kill", "ps"]).length === 0;

console.log("no Firecracker on this machine: tests use test-fixtures/fake-vmm.mjs");

// /tmp keeps socket paths well under 107 bytes; every level is traversable by the owner (nobody).
const base = mkdtempSync("/tmp/bgr-vmm-");
chmodSync(base, 0o755);
const stateDir = join(base, "state");
const runtimeDir = join(base, "run");
mkdirSync(stateDir, { mode: 0o755 });
mkdirSync(runtimeDir, { mode: 0o755 });

const config: HelperConfig = {
  ownerUid: NOBODY,
  ownerGid: NOBODY,
  stateDir,
  runtimeDir,
  firecrackerBin: FAKE_VMM,
  qemuBin: FAKE_VMM,
};
const ops = createVmmOps({
  ...hostPorts({ uid: config.ownerUid, gid: config.ownerGid }),
  config,
  kvmUsable: () => false,
});

/** Every process a test started (VMMs and the unrelated sleep), killed in afterAll whatever happened. */
const started: number[] = [];

afterAll(async () => {
  for (const pid of started) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  await sleep(50);
  rmSync(base, { recursive: true, force: true });
});

async function alive(pid: number): Promise<boolean> {
  const stat = await readStat(pid);
  return stat !== undefined && stat.state !== "Z" && stat.state !== "X";
}

async function waitGone(pid: number): Promise<void> {
  for (let i = 0; i < 250; i++) {
    if (!(await alive(pid))) return;
    await sleep(20);
  }
  throw new Error(`pid ${pid} is still alive`);
}

/** Waits (at most 5 s) until the log relay has written what `found` looks for into `path`. */
async function relayed<T>(path: string, found: (text: string) => T | undefined): Promise<T> {
  for (let i = 0; ; i++) {
    const value = found(readFileSync(path, "utf8"));
    if (value !== undefined) return value;
    if (i >= 250) throw new Error(`nothing expected in ${path}`);
    await sleep(20);
  }
}

interface StartRecord {
  pid: number;
  uid: number;
  gid: number;
  groups: number[];
  argv: string[];
}

/** The `fake-vmm: started {...}` record the fake wrote to its log (through the relay). */
function startRecord(logPath: string): Promise<StartRecord> {
  return relayed(logPath, (text) => {
    const line = text
      .split("\n")
      .filter((l) => l.startsWith("fake-vmm: started "))
      .at(-1);
    return line === undefined ? undefined : (JSON.parse(line.slice("fake-vmm: started ".length)) as StartRecord);
  });
}

/** Every path under the runtime directory with its type, owner and mode: what a refused request must not change. */
function tree(dir = runtimeDir): string[] {
  return readdirSync(dir, { recursive: true, encoding: "utf8" })
    .sort()
    .map((name) => {
      const stats = lstatSync(join(dir, name));
      return `${name} ${stats.mode.toString(8)} ${stats.uid}:${stats.gid} ${stats.size}`;
    });
}

function httpGet(socketPath: string, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    get({ socketPath, path }, (res) => {
      let body = "";
      res.on("data", (chunk: Buffer) => (body += chunk.toString()));
      res.on("end", () => resolve(body));
    }).on("error", reject);
  });
}

function qmpGreeting(socketPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    socket.once("data", (chunk) => {
      socket.destroy();
      resolve(chunk.toString());
    });
    socket.once("error", reject);
  });
}

function machine(vmId: string, overrides: Partial<QemuMachine> = {}): QemuMachine {
  return {
    vcpu: 2,
    memoryMib: 256,
    kernelPath: `${stateDir}/kernels/vmlinux`,
    initrdPath: `${stateDir}/kernels/initrd.img`,
    bootArgs: "console=ttyS0 root=/dev/vda rw",
    rootDisk: `${stateDir}/vms/${vmId}/root.ext4`,
    workDisk: `${stateDir}/vms/${vmId}/work.ext4`,
    mac: "02:00:0a:00:00:02",
    kvm: false,
    tscKhz: 2_500_000,
    incoming: false,
    ...overrides,
  };
}

describe("bad requests are refused before anything happens", () => {
  let before: string[];
  beforeAll(async () => {
    expect(await ops.list()).toEqual([]);
    before = tree();
  });

  const longId = "a".repeat(33);
  const cases: [string, Record<string, unknown>, string][] = [
    ...["", "Bad", "a/b", "..", "a b", "é", "a%b", "-lead", longId, "bgr\0x"].map(
      (vmId): [string, Record<string, unknown>, string] => [
        `vm id ${JSON.stringify(vmId)}`,
        { vmId, kind: "firecracker" },
        "INVALID_VM_ID",
      ],
    ),
    ["kind kvmtool", { vmId: "bad1", kind: "kvmtool" }, "INVALID_VMM_KIND"],
    ["qemu without a machine", { vmId: "bad1", kind: "qemu-microvm" }, "QEMU_MACHINE_REQUIRED"],
    ...([0, 33, 1.5, Number.NaN, "2"] as unknown[]).map((vcpu): [string, Record<string, unknown>, string] => [
      `vcpu ${String(vcpu)}`,
      { vmId: "bad1", kind: "qemu-microvm", qemu: { ...machine("bad1"), vcpu } },
      "INVALID_VCPU",
    ]),
    ...[127, 262_145, -1].map((memoryMib): [string, Record<string, unknown>, string] => [
      `memory ${memoryMib}`,
      { vmId: "bad1", kind: "qemu-microvm", qemu: { ...machine("bad1"), memoryMib } },
      "INVALID_MEMORY",
    ]),
    ...[
      ["kernelPath", "relative/vmlinux", "INVALID_PATH"],
      ["kernelPath", "/etc/passwd", "PATH_OUTSIDE_STATE_DIR"],
      ["kernelPath", `${stateDir}/../x`, "INVALID_PATH"],
      ["kernelPath", `${stateDir}/a/../../../etc/shadow`, "INVALID_PATH"],
      ["kernelPath", `${stateDir}//k`, "INVALID_PATH"],
      ["kernelPath", `${stateDir}/k/`, "INVALID_PATH"],
      ["kernelPath", stateDir, "PATH_OUTSIDE_STATE_DIR"],
      ["kernelPath", `${stateDir}-other/k`, "PATH_OUTSIDE_STATE_DIR"],
      ["kernelPath", `${stateDir}/k\n-append`, "INVALID_PATH"],
      ["kernelPath", "", "INVALID_PATH"],
      ["initrdPath", "/boot/initrd.img", "PATH_OUTSIDE_STATE_DIR"],
      ["rootDisk", "/dev/sda", "PATH_OUTSIDE_STATE_DIR"],
      ["rootDisk", "/dev/mapper/bgr-other-root", "PATH_OUTSIDE_STATE_DIR"],
      ["rootDisk", `${stateDir}/r.ext4,format=qcow2`, "INVALID_PATH"],
      ["rootDisk", `${stateDir}/r.ext4,file.locking=off`, "INVALID_PATH"],
      ["workDisk", "/proc/self/fd/3", "PATH_OUTSIDE_STATE_DIR"],
      ["workDisk", `${stateDir}/w.ext4\0`, "INVALID_PATH"],
    ].map(([field, value, reason]): [string, Record<string, unknown>, string] => [
      `${field} ${JSON.stringify(value)}`,
      { vmId: "bad1", kind: "qemu-microvm", qemu: { ...machine("bad1"), [field as string]: value } },
      reason as string,
    ]),
    ...['root=/dev/vda init="/bin/sh"', "console=ttyS0\ninit=/bin/sh", "console=ttyS0 é", "x".repeat(2049), 42].map(
      (bootArgs): [string, Record<string, unknown>, string] => [
        `boot args ${JSON.stringify(bootArgs).slice(0, 40)}`,
        { vmId: "bad1", kind: "qemu-microvm", qemu: { ...machine("bad1"), bootArgs } },
        "INVALID_BOOT_ARGS",
      ],
    ),
    [
      "boot args that tsc_early_khz would push past 2048 bytes",
      { vmId: "bad1", kind: "qemu-microvm", qemu: { ...machine("bad1"), bootArgs: "x".repeat(2040) } },
      "INVALID_BOOT_ARGS",
    ],
    ...[
      "02:00:0A:00:00:02",
      "01:00:5e:00:00:01",
      "ff:ff:ff:ff:ff:ff",
      "00:00:00:00:00:00",
      "02-00-0a-00-00-02",
      "02:00:0a:00:00",
      "02:00:0a:00:00:02:03",
      " 02:00:0a:00:00:02",
    ].map((mac): [string, Record<string, unknown>, string] => [
      `mac ${mac}`,
      { vmId: "bad1", kind: "qemu-microvm", qemu: { ...machine("bad1"), mac } },
      "INVALID_MAC",
    ]),
    ...[-1, 10_000_001, 0.5].map((tscKhz): [string, Record<string, unknown>, string] => [
      `tsc ${tscKhz}`,
      { vmId: "bad1", kind: "qemu-microvm", qemu: { ...machine("bad1"), tscKhz } },
      "INVALID_TSC_KHZ",
    ]),
    [
      "kvm 'yes'",
      { vmId: "bad1", kind: "qemu-microvm", qemu: { ...machine("bad1"), kvm: "yes" } },
      "INVALID_ACCELERATOR",
    ],
    ...["yes", 1, "file:/etc/shadow"].map((incoming): [string, Record<string, unknown>, string] => [
      `incoming ${JSON.stringify(incoming)}`,
      { vmId: "bad1", kind: "qemu-microvm", qemu: { ...machine("bad1"), incoming } },
      "INVALID_INCOMING",
    ]),
  ];

  it.each(cases)("%s", async (_name, request, reason) => {
    await expect(ops.launch(request as Parameters<VmmOps["launch"]>[0])).rejects.toMatchObject({
      kind: reason === "PATH_OUTSIDE_STATE_DIR" ? "permission-denied" : "invalid-argument",
      reason,
    });
  });

  it("KVM asked for where /dev/kvm is not usable: FAILED_PRECONDITION KVM_ABSENT", async () => {
    await expect(
      ops.launch({ vmId: "bad1", kind: "qemu-microvm", qemu: machine("bad1", { kvm: true }) }),
    ).rejects.toMatchObject({ kind: "failed-precondition", reason: "KVM_ABSENT" });
  });

  it("an owner that is root: FAILED_PRECONDITION OWNER_IS_ROOT (a VMM never runs as root)", async () => {
    for (const owner of [{ ownerUid: 0 }, { ownerGid: 0 }]) {
      const rootOps = createVmmOps({
        ...hostPorts({ uid: config.ownerUid, gid: config.ownerGid }),
        config: { ...config, ...owner },
      });
      await expect(rootOps.launch({ vmId: "bad1", kind: "firecracker" })).rejects.toMatchObject({
        kind: "failed-precondition",
        reason: "OWNER_IS_ROOT",
      });
    }
  });

  it("a socket path longer than 107 bytes: INVALID_ARGUMENT SOCKET_PATH_TOO_LONG", async () => {
    const longOps = createVmmOps({
      ...hostPorts({ uid: config.ownerUid, gid: config.ownerGid }),
      config: { ...config, runtimeDir: join(runtimeDir, "r".repeat(80)) },
    });
    await expect(longOps.launch({ vmId: "a".repeat(32), kind: "firecracker" })).rejects.toMatchObject({
      kind: "invalid-argument",
      reason: "SOCKET_PATH_TOO_LONG",
    });
  });

  it("left nothing behind: no process, the runtime directory byte-for-byte the same", async () => {
    expect(await ops.list()).toEqual([]);
    expect(tree()).toEqual(before);
  });
});

describe.skipIf(!HAVE_VMM_TOOLS)("a Firecracker VMM", () => {
  const vmId = "fc1";
  let pid = 0;
  let startTime = 0n;

  it("is launched as the owner, detached, with exactly the argv the helper builds", async () => {
    const result = await ops.launch({ vmId, kind: "firecracker" });
    started.push(result.pid);
    ({ pid, startTime } = result);
    const dir = `${runtimeDir}/vms/${vmId}`;
    expect(result).toEqual({
      pid: expect.any(Number) as number,
      startTime: expect.any(BigInt) as bigint,
      controlSocket: `${dir}/firecracker.sock`,
      logPath: `${dir}/vmm.log`,
      consolePath: `${dir}/console.log`,
    });
    const built = firecrackerArgv(config, vmId);
    expect(built).toEqual([
      FAKE_VMM,
      "--api-sock",
      `${dir}/firecracker.sock`,
      "--id",
      vmId,
      "--log-path",
      "/proc/self/fd/2",
      "--level",
      "Info",
    ]);

    // The kernel's view: owner uid/gid everywhere, no supplementary groups, its own session.
    const credentials = await readCredentials(pid);
    expect(credentials?.uid).toEqual({ real: NOBODY, effective: NOBODY, saved: NOBODY, filesystem: NOBODY });
    expect(credentials?.gid).toEqual({ real: NOBODY, effective: NOBODY, saved: NOBODY, filesystem: NOBODY });
    expect(credentials?.groups).toEqual([]);
    const stat = await readStat(pid);
    expect(stat?.startTime).toBe(startTime);
    expect(stat?.session).toBe(pid);
    // The fake is a `#!/usr/bin/env node` script: its interpreter comes first, then exactly the built argv.
    expect((await readCmdline(pid))?.slice(1)).toEqual(built);
    // And what the VMM itself received.
    const record = await startRecord(result.logPath);
    expect(record).toMatchObject({ pid, uid: NOBODY, gid: NOBODY, argv: built });

    // Its socket, owned by the owner, answering the API; its directory and logs the owner's.
    const socket = lstatSync(result.controlSocket);
    expect(socket.isSocket()).toBe(true);
    expect(socket.uid).toBe(NOBODY);
    expect(JSON.parse(await httpGet(result.controlSocket, "/"))).toMatchObject({ id: vmId, app_name: "Firecracker" });
    const dirStats = statSync(dir);
    expect([dirStats.mode & 0o7777, dirStats.uid, dirStats.gid]).toEqual([0o770, NOBODY, 0]);
    for (const file of [result.logPath, result.consolePath]) {
      const stats = lstatSync(file);
      expect([stats.isFile(), stats.mode & 0o7777, stats.uid, stats.nlink]).toEqual([true, 0o644, NOBODY, 1]);
    }
    await relayed(result.consolePath, (text) => (text.includes(`fake-vmm: console of ${vmId}`) ? true : undefined));

    // The start time as the rpc layer sends it, and back.
    const startedAt = vmmStartDate(startTime);
    expect(Math.abs(startedAt.getTime() - Date.now())).toBeLessThan(60_000);
    expect(vmmStartTimeFromDate(startedAt)).toBe(startTime);

    // It outlives the call that launched it.
    await sleep(300);
    expect(await alive(pid)).toBe(true);
  });

  it("is listed with its vm id, pid, start time, kind and uid", async () => {
    expect(await ops.list()).toEqual([{ vmId, pid, startTime, kind: "firecracker", uid: NOBODY }]);
  });

  it("cannot get a second VMM: FAILED_PRECONDITION VMM_RUNNING", async () => {
    await expect(ops.launch({ vmId, kind: "firecracker" })).rejects.toMatchObject({
      kind: "failed-precondition",
      reason: "VMM_RUNNING",
    });
    await expect(ops.launch({ vmId, kind: "qemu-microvm", qemu: machine(vmId) })).rejects.toMatchObject({
      reason: "VMM_RUNNING",
    });
    expect((await ops.list()).filter((p) => p.vmId === vmId)).toHaveLength(1);
    expect(await alive(pid)).toBe(true);
  });

  it("refuses every signal without the proof, and signals nothing", async () => {
    const sleeper = spawn("/bin/sleep", ["100"], { stdio: "ignore" });
    const sleeperPid = sleeper.pid ?? 0;
    started.push(sleeperPid);
    const sleeperStart = (await readStat(sleeperPid))?.startTime ?? 0n;
    const initStart = (await readStat(1))?.startTime ?? 0n;
    const refused: [string, { vmId: string; pid: number; startTime: bigint; signal: string }, string, string][] = [
      [
        "wrong start time",
        { vmId, pid, startTime: startTime + 1n, signal: "KILL" },
        "permission-denied",
        "NOT_THE_VMS_PROCESS",
      ],
      ["another VM's id", { vmId: "fc2", pid, startTime, signal: "KILL" }, "permission-denied", "NOT_THE_VMS_PROCESS"],
      [
        "an unrelated process",
        { vmId, pid: sleeperPid, startTime: sleeperStart, signal: "KILL" },
        "permission-denied",
        "NOT_THE_VMS_PROCESS",
      ],
      [
        "this process",
        { vmId, pid: process.pid, startTime: (await readStat(process.pid))?.startTime ?? 0n, signal: "KILL" },
        "permission-denied",
        "NOT_THE_VMS_PROCESS",
      ],
      ["pid 1", { vmId, pid: 1, startTime: initStart, signal: "KILL" }, "invalid-argument", "INVALID_PID"],
      ["pid 0", { vmId, pid: 0, startTime, signal: "KILL" }, "invalid-argument", "INVALID_PID"],
      ["pid -1", { vmId, pid: -1, startTime, signal: "KILL" }, "invalid-argument", "INVALID_PID"],
      ["pid 1.5", { vmId, pid: 1.5, startTime, signal: "KILL" }, "invalid-argument", "INVALID_PID"],
      ["pid NaN", { vmId, pid: Number.NaN, startTime, signal: "KILL" }, "invalid-argument", "INVALID_PID"],
      ["a bad vm id", { vmId: "../fc1", pid, startTime, signal: "KILL" }, "invalid-argument", "INVALID_VM_ID"],
      ["signal HUP", { vmId, pid, startTime, signal: "HUP" }, "invalid-argument", "INVALID_SIGNAL"],
      [
        "a negative start time",
        { vmId, pid, startTime: -1n, signal: "KILL" },
        "invalid-argument",
        "INVALID_START_TIME",
      ],
    ];
    for (const [name, request, kind, reason] of refused) {
      await expect(ops.signal(request as Parameters<VmmOps["signal"]>[0]), name).rejects.toMatchObject({
        kind,
        reason,
      });
    }
    expect(await alive(pid)).toBe(true);
    expect(await alive(sleeperPid)).toBe(true);
    expect(await alive(1)).toBe(true);
    expect((await ops.list()).map((p) => p.pid)).toEqual([pid]);
    process.kill(sleeperPid, "SIGKILL");
  });

  it("is stopped by TERM with the right proof; a second signal finds it gone", async () => {
    expect(await ops.signal({ vmId, pid, startTime, signal: "TERM" })).toEqual({ existed: true });
    await waitGone(pid);
    expect(await ops.list()).toEqual([]);
    expect(await ops.signal({ vmId, pid, startTime, signal: "TERM" })).toEqual({ existed: false });
    expect(await ops.signal({ vmId, pid, startTime, signal: "KILL" })).toEqual({ existed: false });
  });

  it("can be launched again over the socket the dead one left, then KILLed", async () => {
    expect(lstatSync(`${runtimeDir}/vms/${vmId}/firecracker.sock`).isSocket()).toBe(true); // stale
    const again = await ops.launch({ vmId, kind: "firecracker" });
    started.push(again.pid);
    expect(again.pid).not.toBe(pid);
    expect(await ops.list()).toEqual([
      { vmId, pid: again.pid, startTime: again.startTime, kind: "firecracker", uid: NOBODY },
    ]);
    expect(await ops.signal({ vmId, pid: again.pid, startTime: again.startTime, signal: "KILL" })).toEqual({
      existed: true,
    });
    await waitGone(again.pid);
    expect(await ops.list()).toEqual([]);
  });

  it("two launches of one VM at the same time start one VMM", async () => {
    const results = await Promise.allSettled([
      ops.launch({ vmId: "fc3", kind: "firecracker" }),
      ops.launch({ vmId: "fc3", kind: "firecracker" }),
    ]);
    const launched = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    for (const l of launched) started.push(l.pid);
    expect(launched).toHaveLength(1);
    expect(results.find((r) => r.status === "rejected")).toMatchObject({ reason: { reason: "VMM_RUNNING" } });
    const [only] = launched;
    if (!only) throw new Error("no launch");
    expect(await ops.signal({ vmId: "fc3", pid: only.pid, startTime: only.startTime, signal: "KILL" })).toEqual({
      existed: true,
    });
    await waitGone(only.pid);
  });

  it("a process with the VM's argv that does not run as the owner is listed but never signalled", async () => {
    const rootVm = "fcroot";
    mkdirSync(`${runtimeDir}/vms/${rootVm}`, { recursive: true, mode: 0o700 });
    const [bin, ...args] = firecrackerArgv(config, rootVm);
    const impostor = spawn(bin ?? "", args, { stdio: "ignore" }); // as root, by the test
    const impostorPid = impostor.pid ?? 0;
    started.push(impostorPid);
    for (let i = 0; i < 250 && !(await ops.list()).some((p) => p.vmId === rootVm); i++) await sleep(20);
    const listed = (await ops.list()).find((p) => p.vmId === rootVm);
    expect(listed).toMatchObject({ pid: impostorPid, uid: 0, kind: "firecracker" });
    await expect(
      ops.signal({ vmId: rootVm, pid: impostorPid, startTime: listed?.startTime ?? 0n, signal: "KILL" }),
    ).rejects.toMatchObject({ reason: "NOT_THE_VMS_PROCESS" });
    await expect(ops.launch({ vmId: rootVm, kind: "firecracker" })).rejects.toMatchObject({ reason: "VMM_RUNNING" });
    expect(await alive(impostorPid)).toBe(true);
    impostor.kill("SIGKILL");
    await waitGone(impostorPid);
  });
});

describe.skipIf(!HAVE_VMM_TOOLS)("a QEMU microvm VMM", () => {
  it("gets the whole machine on its command line, as the owner, with the VM's tap, QMP and console", async () => {
    const vmId = "qm1";
    const m = machine(vmId);
    const result = await ops.launch({ vmId, kind: "qemu-microvm", qemu: m });
    started.push(result.pid);
    const dir = `${runtimeDir}/vms/${vmId}`;
    expect(result).toMatchObject({
      controlSocket: `${dir}/qmp.sock`,
      logPath: `${dir}/vmm.log`,
      consolePath: `${dir}/console.log`,
    });
    const built = qemuArgv(config, vmId, m, 2_500_000);
    expect(built).toEqual([
      FAKE_VMM,
      "-M",
      "microvm,x-option-roms=off",
      "-accel",
      "tcg,split-wx=on",
      "-cpu",
      "max",
      "-smp",
      "2",
      "-m",
      "256M",
      "-kernel",
      m.kernelPath,
      "-initrd",
      m.initrdPath,
      "-append",
      "console=ttyS0 root=/dev/vda rw tsc_early_khz=2500000",
      "-drive",
      `id=root,file=${m.rootDisk},format=raw,if=none`,
      "-device",
      "virtio-blk-device,drive=root",
      "-drive",
      `id=work,file=${m.workDisk},format=raw,if=none`,
      "-device",
      "virtio-blk-device,drive=work",
      "-netdev",
      `tap,id=net0,ifname=${tapName(vmId)},script=no,downscript=no`,
      "-device",
      "virtio-net-device,netdev=net0,mac=02:00:0a:00:00:02",
      "-device",
      "virtio-serial-device",
      "-chardev",
      `socket,id=agent0,path=${dir}/agent.sock,server=on,wait=off`,
      "-device",
      "virtserialport,chardev=agent0,name=org.qemu.guest_agent.0",
      "-qmp",
      `unix:${dir}/qmp.sock,server=on,wait=off`,
      "-serial",
      "stdio",
      "-nographic",
      "-nodefaults",
      "-no-user-config",
      "-no-reboot",
    ]);
    expect(await startRecord(result.logPath)).toMatchObject({ pid: result.pid, uid: NOBODY, gid: NOBODY, argv: built });
    // To take a saved state: the same machine, waiting for it (the state itself comes over QMP, not through the helper).
    expect(qemuArgv(config, vmId, { ...m, incoming: true }, 2_500_000)).toEqual([...built, "-incoming", "defer"]);
    expect((await readCmdline(result.pid))?.slice(1)).toEqual(built);
    expect(await qmpGreeting(result.controlSocket)).toContain('"QMP"');
    expect(lstatSync(result.consolePath).uid).toBe(NOBODY);
    expect(await ops.list()).toEqual([
      { vmId, pid: result.pid, startTime: result.startTime, kind: "qemu-microvm", uid: NOBODY },
    ]);
    expect(await ops.signal({ vmId, pid: result.pid, startTime: result.startTime, signal: "KILL" })).toEqual({
      existed: true,
    });
    await waitGone(result.pid);
  });

  it("measures the host's TSC when asked for 0, takes the VM's dm node as root disk, and uses KVM where usable", async () => {
    const vmId = "qm2";
    const kvmOps = createVmmOps({
      ...hostPorts({ uid: config.ownerUid, gid: config.ownerGid }),
      config,
      kvmUsable: () => true,
      hostTscKhz: () => 1_234_567,
    });
    const tcg = machine(vmId, { tscKhz: 0, initrdPath: "", rootDisk: "/dev/mapper/bgr-qm2-root" });
    const first = await kvmOps.launch({ vmId, kind: "qemu-microvm", qemu: tcg });
    started.push(first.pid);
    const argv = (await startRecord(first.logPath)).argv;
    expect(argv).toEqual(qemuArgv(config, vmId, tcg, 1_234_567));
    expect(argv).not.toContain("-initrd");
    expect(argv).toContain("id=root,file=/dev/mapper/bgr-qm2-root,format=raw,if=none");
    expect(argv[argv.indexOf("-append") + 1]).toBe("console=ttyS0 root=/dev/vda rw tsc_early_khz=1234567");
    await kvmOps.signal({ vmId, pid: first.pid, startTime: first.startTime, signal: "KILL" });
    await waitGone(first.pid);

    const kvm = machine(vmId, { kvm: true });
    const second = await kvmOps.launch({ vmId, kind: "qemu-microvm", qemu: kvm });
    started.push(second.pid);
    const kvmArgv = (await startRecord(second.logPath)).argv;
    expect(kvmArgv.slice(3, 7)).toEqual(["-accel", "kvm", "-cpu", "host"]);
    expect(kvmArgv[kvmArgv.indexOf("-append") + 1]).toBe("console=ttyS0 root=/dev/vda rw"); // no TSC hint under KVM
    await kvmOps.signal({ vmId, pid: second.pid, startTime: second.startTime, signal: "TERM" });
    await waitGone(second.pid);
    expect(await ops.list()).toEqual([]);
  });
});

describe("the proof that a QEMU is a VM's", () => {
  it("refuses a QEMU whose agent chardev is not the one derived from its VM id", async () => {
    const vmId = "qm3";
    mkdirSync(`${runtimeDir}/vms/${vmId}`, { recursive: true, mode: 0o700 });
    const argv = qemuArgv(config, vmId, machine(vmId), 2_500_000);
    const at = argv.indexOf("-chardev") + 1;
    argv[at] = (argv[at] ?? "").replace(`/vms/${vmId}/`, "/vms/other/");
    const [bin, ...args] = argv;
    const impostor = spawn(bin ?? "", args, { stdio: "ignore" });
    started.push(impostor.pid ?? 0);
    await sleep(1_000); // time to start: it must still never be listed
    expect((await ops.list()).some((p) => p.vmId === vmId || p.pid === impostor.pid)).toBe(false);
    impostor.kill("SIGKILL");
    await waitGone(impostor.pid ?? 0);
  });
});

describe.skipIf(!HAVE_VMM_TOOLS)("a launch that cannot go through", () => {
  it("a VMM binary that is not there: FAILED_PRECONDITION VMM_BINARY_UNUSABLE", async () => {
    const missing = createVmmOps({
      ...hostPorts({ uid: config.ownerUid, gid: config.ownerGid }),
      config: { ...config, firecrackerBin: "/nonexistent/firecracker" },
    });
    await expect(missing.launch({ vmId: "gone1", kind: "firecracker" })).rejects.toMatchObject({
      kind: "failed-precondition",
      reason: "VMM_BINARY_UNUSABLE",
    });
  });

  it("a VMM that exits at once: FAILED_PRECONDITION VMM_EXITED, with its output", async () => {
    const exiting = createVmmOps({
      ...hostPorts({ uid: config.ownerUid, gid: config.ownerGid }),
      config: { ...config, firecrackerBin: "/bin/false" },
    });
    await expect(exiting.launch({ vmId: "gone2", kind: "firecracker" })).rejects.toMatchObject({
      kind: "failed-precondition",
      reason: "VMM_EXITED",
    });
    expect(await ops.list()).toEqual([]);
  });

  it("a VMM that prints and exits: its console and its log, through the log relays, are in the error", async () => {
    const script = join(base, "complaining-vmm.sh");
    writeFileSync(
      script,
      "#!/bin/sh\necho 'guest said this'\necho 'firecracker: cannot open the kernel' >&2\nexit 1\n",
      { mode: 0o755 },
    );
    const complaining = createVmmOps({
      ...hostPorts({ uid: config.ownerUid, gid: config.ownerGid }),
      config: { ...config, firecrackerBin: script },
    });
    const failure = complaining.launch({ vmId: "gone3", kind: "firecracker" });
    await expect(failure).rejects.toMatchObject({ kind: "failed-precondition", reason: "VMM_EXITED" });
    await expect(failure).rejects.toThrow(/: guest said this\nfirecracker: cannot open the kernel$/);
  });

  it("a VMM that never opens its socket is killed: DEADLINE_EXCEEDED VMM_NOT_READY", async () => {
    const script = join(base, "silent-vmm.sh");
    writeFileSync(script, "#!/bin/sh\nexec sleep 100\n", { mode: 0o755 });
    const silent = createVmmOps({
      ...hostPorts({ uid: config.ownerUid, gid: config.ownerGid }),
      config: { ...config, firecrackerBin: script },
      readyTimeoutMs: 300,
    });
    await expect(silent.launch({ vmId: "slow1", kind: "firecracker" })).rejects.toMatchObject({
      kind: "deadline-exceeded",
      reason: "VMM_NOT_READY",
    });
    await sleep(100);
    const leftovers = execFileSync("ps", ["-eo", "pid,uid,args"], { encoding: "utf8" })
      .split("\n")
      .filter((l) => l.includes("sleep 100") && l.trim().split(/\s+/)[1] === String(NOBODY));
    expect(leftovers).toEqual([]);
  });

  it("a VM directory that is a symlink is refused and nothing is written through it", async () => {
    const elsewhere = join(base, "elsewhere");
    mkdirSync(elsewhere, { mode: 0o755 });
    mkdirSync(`${runtimeDir}/vms`, { recursive: true, mode: 0o711 });
    symlinkSync(elsewhere, `${runtimeDir}/vms/evil`);
    await expect(ops.launch({ vmId: "evil", kind: "firecracker" })).rejects.toMatchObject({
      kind: "failed-precondition",
      reason: "RUNTIME_DIR_UNSAFE",
    });
    expect(readdirSync(elsewhere)).toEqual([]);
    expect(statSync(elsewhere).uid).toBe(0);
    expect(statSync(elsewhere).mode & 0o7777).toBe(0o755);
  });

  it("log files the owner replaced with a symlink, a hard link or a FIFO are moved aside by the relay, never written through", async () => {
    const target = join(base, "root-secret");
    writeFileSync(target, "secret\n", { mode: 0o600 });
    const plant = (vmId: string, name: string, how: (path: string) => void) => {
      const dir = `${runtimeDir}/vms/${vmId}`;
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      how(join(dir, name));
      chownSync(dir, NOBODY, 0); // as an earlier launch handed it over
      chmodSync(dir, 0o770);
    };
    plant("sym1", "console.log", (p) => symlinkSync(target, p));
    plant("sym2", "vmm.log", (p) => symlinkSync(target, p));
    plant("hard1", "vmm.log", (p) => linkSync(target, p));
    plant("fifo1", "console.log", (p) => execFileSync("mkfifo", ["-m", "600", p]));
    plant("other1", "vmm.log", (p) => writeFileSync(p, "root's\n", { mode: 0o600 })); // a regular file, but root's
    for (const vmId of ["sym1", "sym2", "hard1", "fifo1", "other1"]) {
      const launched = await ops.launch({ vmId, kind: "firecracker" });
      started.push(launched.pid);
      for (const file of [launched.consolePath, launched.logPath]) {
        const stats = lstatSync(file);
        expect([stats.isFile(), stats.uid, stats.nlink], `${vmId} ${file}`).toEqual([true, NOBODY, 1]);
      }
      await ops.signal({ vmId, pid: launched.pid, startTime: launched.startTime, signal: "KILL" });
      await waitGone(launched.pid);
    }
    expect(readFileSync(target, "utf8")).toBe("secret\n");
    const stats = statSync(target);
    expect([stats.uid, stats.mode & 0o7777]).toEqual([0, 0o600]);
    expect(await ops.list()).toEqual([]);
  });
});

describe.skipIf(!HAVE_VMM_TOOLS)("removing a VM's runtime files (RemoveVmmFiles)", () => {
  it("refuses a bad vm id and, while the VMM runs, VMM_RUNNING; both change nothing", async () => {
    await expect(ops.removeFiles({ vmId: "../run" })).rejects.toMatchObject({ reason: "INVALID_VM_ID" });
    const launched = await ops.launch({ vmId: "rm1", kind: "firecracker" });
    started.push(launched.pid);
    const before = readdirSync(`${runtimeDir}/vms/rm1`).sort();
    await expect(ops.removeFiles({ vmId: "rm1" })).rejects.toMatchObject({
      kind: "failed-precondition",
      reason: "VMM_RUNNING",
    });
    expect(readdirSync(`${runtimeDir}/vms/rm1`).sort()).toEqual(before);
    expect(await alive(launched.pid)).toBe(true);

    await ops.signal({ vmId: "rm1", pid: launched.pid, startTime: launched.startTime, signal: "KILL" });
    await waitGone(launched.pid);
    expect(await ops.removeFiles({ vmId: "rm1" })).toEqual({ existed: true });
    expect(readdirSync(`${runtimeDir}/vms`)).not.toContain("rm1");
    expect(await ops.removeFiles({ vmId: "rm1" })).toEqual({ existed: false }); // idempotent
  });

  it("removes a symlink the owner put in place of the directory, never what it points to", async () => {
    const target = join(base, "kept");
    mkdirSync(target, { mode: 0o755 });
    writeFileSync(join(target, "precious"), "x");
    mkdirSync(`${runtimeDir}/vms`, { recursive: true, mode: 0o711 });
    symlinkSync(target, `${runtimeDir}/vms/rm2`);
    expect(await ops.removeFiles({ vmId: "rm2" })).toEqual({ existed: true });
    expect(() => lstatSync(`${runtimeDir}/vms/rm2`)).toThrow();
    expect(readdirSync(target)).toEqual(["precious"]);
  });
});
