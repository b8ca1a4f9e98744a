// A real guest, create → exec-able, against the same guest booted by a hand-written QEMU command.
//
// banger: the three real services (orchestrator and puller as uid 1000, the helper as root; the helper
// and the orchestrator in a throwaway network namespace, where the bridge and the guests are), QEMU
// `-M microvm` under TCG (no KVM here), this machine's Debian kernel imported with banger's initramfs
// (guest kit included), the built-in busybox image `tiny`. Measured: CreateVm (which waits for the
// guest agent and the SSH banner) + WatchOperation to its end, then Exec `true` over SSH until it
// exits 0 — from the CreateVm call to that exit.
//
// Baseline: `qemu-system-x86_64 -M microvm` written here by hand with the same vmlinux, the same
// initramfs, a fresh sparse copy of tiny's root disk as virtio-blk, the same CPU, memory and TSC
// argument, the serial console on stdio, `init=/bin/sh` (banger's initramfs does all its work —
// modules, root mount, host key, the kit's copy to /run — then switches to the image's shell on the
// console). Measured: from spawning QEMU to the shell's answer to `echo` on the serial console.
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { runtimeLayout, stateLayout } from "@banger/common/layout";
import { fmt, printTable, report } from "./lib.mjs";
import {
  QEMU,
  durationMs,
  median,
  ms,
  qemuPids,
  realGuestSkipReason,
  untilExecAble,
  withRealGuests,
} from "./real-guests.mjs";

const RUNS = Number(process.env.BENCH_BOOT_RUNS ?? 3);
const HEADING = "\n## real guest: create → exec-able (QEMU microvm, TCG, image tiny)\n";
/** What the goal allows beyond the hand-written boot. */
const ALLOWANCE_MS = 500;

/** What the guest console shows on its way up, by the host's clock: where a boot's time goes. */
const MARKERS = {
  "kernel prints": /Linux version/,
  "initramfs /init runs": /banger-init:|Run \/init as init process/,
  "root disk handed over": /banger-init: (starting|no init)/,
};

/** The first time (ms since `t0`) each marker appears in `text`, added to `seen`. */
function mark(seen, text, t0) {
  for (const [name, pattern] of Object.entries(MARKERS)) if (!(name in seen) && pattern.test(text)) seen[name] = ms(t0);
}

/** Polls the console logs of the VMs under `runtimeDir` (one VM at a time here) for the markers. */
function watchConsole(runtimeDir, t0) {
  const seen = {};
  const vmsDir = runtimeLayout(runtimeDir).vmsDir;
  const timer = setInterval(() => {
    try {
      for (const id of readdirSync(vmsDir))
        mark(seen, readFileSync(runtimeLayout(runtimeDir).vm(id).consoleLog, "latin1"), t0);
    } catch {
      // not there yet
    }
  }, 25);
  return () => (clearInterval(timer), seen);
}
/** The QEMU argv of a running VMM (to take the very same kernel, initrd and TSC argument from it). */
function qemuArgvOf(runtimeDir) {
  const pid = qemuPids(runtimeDir).at(-1);
  if (pid === undefined) throw new Error("no QEMU of this run is running");
  return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").slice(0, -1);
}
const after = (argv, flag) => argv[argv.indexOf(flag) + 1];

/**
 * One hand-written boot: ms from spawning QEMU to the guest's shell answering on the serial console,
 * and the seconds since boot banger's initramfs reported when it handed over.
 */
async function handBoot({ kernel, initrd, rootfs, tscArg, scratch }) {
  const disk = join(scratch, `root-${randomBytes(4).toString("hex")}.ext4`);
  execFileSync("cp", ["--sparse=always", rootfs, disk]);
  const append = `console=ttyS0 reboot=t panic=1 root=/dev/vda rw init=/bin/sh ${tscArg}`.trim();
  // The same machine banger's helper builds, less what a bare boot has no use for (network, agent port, QMP).
  const argv = [
    ...["-M", "microvm,x-option-roms=off", "-accel", "tcg,split-wx=on", "-cpu", "max", "-smp", "1", "-m", "256M"],
    ...["-kernel", kernel, "-initrd", initrd, "-append", append],
    ...["-drive", `id=root,file=${disk},format=raw,if=none`, "-device", "virtio-blk-device,drive=root"],
    ...["-serial", "stdio", "-nographic", "-nodefaults", "-no-user-config", "-no-reboot"],
  ];
  const t0 = performance.now();
  const qemu = spawn(QEMU, argv, { stdio: ["pipe", "pipe", "pipe"] });
  let out = "";
  let stderr = "";
  const seen = {};
  qemu.stderr.on("data", (c) => (stderr += c));
  try {
    return await new Promise((resolve, reject) => {
      // The shell prints 42 only when it runs the line (the terminal's echo shows the line as typed).
      const ask = setInterval(() => qemu.stdin.write("echo BOOT_$((6*7))\n"), 100);
      const timer = setTimeout(() => done(new Error(`no answer in 180 s; console:\n${out.slice(-2000)}`)), 180_000);
      const done = (error, value) => {
        clearInterval(ask);
        clearTimeout(timer);
        if (error) reject(error);
        else resolve(value);
      };
      qemu.stdout.on("data", (c) => {
        out += c.toString("latin1");
        mark(seen, out, t0);
        if (/BOOT_42/.test(out)) {
          const handover = /banger-init: starting \/bin\/sh \(([\d.]+) s after boot\)/.exec(out)?.[1];
          done(undefined, { ms: ms(t0), handoverS: handover === undefined ? NaN : Number(handover), seen });
        }
      });
      qemu.once("exit", (code) => done(new Error(`qemu exited ${code}: ${stderr}\n${out.slice(-2000)}`)));
    });
  } finally {
    qemu.kill("SIGKILL");
    rmSync(disk, { force: true });
  }
}

export async function benchBoot() {
  const skip = realGuestSkipReason();
  if (skip) {
    console.log(`${HEADING}\nskipped: ${skip}`);
    return;
  }
  await withRealGuests(async ({ services, vms, watch, execTrue }) => {
    // banger: create → exec-able, then the VM is deleted (the next create starts from the same state).
    const banger = [];
    let baselineFiles;
    for (let i = 0; i < RUNS; i++) {
      const name = `boot-${i}`;
      const t0 = performance.now();
      const stopWatching = watchConsole(services.runtimeDir, t0);
      const { operation } = await vms.createVm({ name, image: "tiny", sshTimeout: { seconds: 180n, nanos: 0 } });
      const ended = await watch(operation.id);
      const created = ms(t0);
      const tries = await untilExecAble(execTrue, name);
      // When banger's initramfs handed over (guest seconds since its kernel started), from the console.
      const { vm } = await vms.getVm({ name });
      const console_ = readFileSync(runtimeLayout(services.runtimeDir).vm(vm.id).consoleLog, "utf8");
      const handover = /banger-init: [^\n]*\(([\d.]+) s after boot\)/.exec(console_)?.[1];
      const seen = stopWatching();
      banger.push({ ms: ms(t0), created, tries, stages: ended.stages, handoverS: Number(handover ?? NaN), seen });
      if (!baselineFiles) {
        const argv = qemuArgvOf(services.runtimeDir);
        const tsc = /(?:^| )(tsc_early_khz=\d+)/.exec(after(argv, "-append"))?.[1] ?? "";
        baselineFiles = { kernel: after(argv, "-kernel"), initrd: after(argv, "-initrd"), tscArg: tsc };
      }
      await watch((await vms.deleteVm({ name })).operation.id);
    }

    // Baseline: the same files, booted by hand (as root: it reads the owner's files; QEMU runs the same).
    const rootfs = stateLayout(services.stateDir).image("tiny").rootfs;
    const baseline = [];
    for (let i = 0; i < RUNS; i++) baseline.push(await handBoot({ ...baselineFiles, rootfs, scratch: services.dir }));

    const bangerMs = median(banger.map((r) => r.ms));
    const baseMs = median(baseline.map((r) => r.ms));
    console.log(HEADING);
    console.log(
      "banger: CreateVm + WatchOperation (waits for the agent and SSH), then Exec `true` until it exits 0.\n" +
        "baseline: a hand-written qemu -M microvm, same vmlinux, initramfs, CPU, memory and a copy of the root\n" +
        "disk, init=/bin/sh: QEMU's spawn to the shell's answer on the serial console.\n" +
        "handover: the guest's seconds since boot when banger's initramfs switched to the root disk (its console).\n",
    );
    printTable(
      ["run", "banger ms", "  create", "  exec tries", "  handover s", "baseline ms", "  handover s"],
      banger.map((r, i) => [
        String(i + 1),
        fmt(r.ms, 0),
        fmt(r.created, 0),
        String(r.tries),
        fmt(r.handoverS, 2),
        fmt(baseline[i].ms, 0),
        fmt(baseline[i].handoverS, 2),
      ]),
    );
    console.log(
      `\nmedian: banger ${fmt(bangerMs, 0)} ms, baseline ${fmt(baseMs, 0)} ms, difference ${fmt(bangerMs - baseMs, 0)} ms (goal ≤ ${ALLOWANCE_MS})`,
    );
    console.log("");
    printTable(
      ["create stage", ...banger.map((_, i) => `run ${i + 1} ms`)],
      banger[0].stages.map(({ name }) => [
        name,
        ...banger.map((r) => fmt(durationMs(r.stages.find((s) => s.name === name)?.elapsed), 0)),
      ]),
    );
    console.log("");
    const at = (runs, name) => median(runs.map((r) => r.seen?.[name] ?? NaN));
    printTable(
      ["console shows (host clock, median ms)", "banger: since CreateVm", "baseline: since QEMU's spawn"],
      Object.keys(MARKERS).map((name) => [name, fmt(at(banger, name), 0), fmt(at(baseline, name), 0)]),
    );
    report({
      measure: "real guest create → exec-able (TCG, tiny)",
      baseline: `hand-written qemu: ${fmt(baseMs, 0)} ms (+${ALLOWANCE_MS} = ${fmt(baseMs + ALLOWANCE_MS, 0)})`,
      now: `${fmt(bangerMs, 0)} ms`,
      ratio: bangerMs / (baseMs + ALLOWANCE_MS),
      goal: 1.0,
    });
  });
}
