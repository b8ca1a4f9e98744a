import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DeadlineExceededError } from "@banger/common";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  CONSOLE_HINTS,
  SILENT_GUEST_HINT,
  TAIL_LINE_CHARS,
  consoleHint,
  explainVmFailure,
  printableLines,
  readLogEnd,
  whileVmmRuns,
} from "./readiness.js";

/** The end of a real kernel panic's console (Debian 6.1, no root disk), with its 20-odd lines of trace. */
const PANIC_NO_ROOT = [
  '[    1.204211] VFS: Cannot open root device "vda" or unknown-block(0,0): error -6',
  '[    1.204650] Please append a correct "root=" boot option; here are the available partitions:',
  "[    1.205120] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
  "[    1.205500] CPU: 0 PID: 1 Comm: swapper/0 Not tainted 6.1.0-27-amd64 #1  Debian 6.1.115-1",
  "[    1.205900] Call Trace:",
  ...Array.from({ length: 24 }, (_, i) => `[    1.20${6000 + i}]  frame_${i}+0x${(i * 37).toString(16)}/0x1a0`),
  "[    1.215000] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0) ]---",
].join("\n");

/** The console line(s) each hint is there for, in CONSOLE_HINTS order, and the hint they give. */
const CASES: [string, string, RegExp][] = [
  [
    "no SSH server",
    "banger-init: no init on the root disk: starting banger's minimal init (2.1 s after boot)\r\n" +
      "banger-init: the image has no /usr/sbin/sshd or /usr/sbin/dropbear: nothing to log in with\r\n",
    /^no SSH server in the image/,
  ],
  [
    "banger's initramfs gave up",
    "banger-init: module vsock did not load\nbanger-init: root device /dev/vdz did not appear\r\n" +
      "banger-init: cannot boot; rebooting (the VMM exits)\n[    11.5] reboot: Restarting system\n",
    /^banger's initramfs could not boot the image: root device \/dev\/vdz did not appear$/,
  ],
  ["no root file system", PANIC_NO_ROOT, /^the kernel could not mount the root disk/],
  [
    "init exited",
    "banger-init: starting the image's /sbin/init (2.3 s after boot)\n" +
      "[    2.41] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n",
    /^the image's init exited/,
  ],
  [
    "no init",
    "[    1.9] Kernel panic - not syncing: No working init found.  Try passing init= option to kernel.\n",
    /^the kernel found no init/,
  ],
  [
    "another panic",
    "[    0.9] Kernel panic - not syncing: Out of memory and no killable processes...\n" +
      "[    0.9] ---[ end Kernel panic - not syncing: Out of memory and no killable processes... ]---\n",
    /^the guest kernel panicked: Out of memory and no killable processes\.\.\.$/,
  ],
];

describe("console hints", () => {
  it.each(CASES)("recognises %s", (_what, console, hint) => {
    expect(consoleHint(console)).toMatch(hint);
  });

  it("has one tested case per hint, and none for an ordinary boot", () => {
    expect(CASES).toHaveLength(CONSOLE_HINTS.length);
    expect(consoleHint("[    0.0] Linux version 6.1.0\nbanger-init: starting the image's /sbin/init\nlogin: ")).toBe(
      undefined,
    );
  });
});

describe("printable lines", () => {
  it("drops terminal escapes and carriage returns, shows other controls as ?, and cuts long lines", () => {
    const lines = printableLines(
      `\x1b[0;32m  OK  \x1b[0m] Started\r\n\x1b]0;title\x07bell\x07 nul\x00 c1\u009b\n${"x".repeat(500)}`,
    );
    expect(lines[0]).toBe("  OK  ] Started");
    expect(lines[1]).toBe("bell? nul? c1?");
    expect(lines[2]).toHaveLength(TAIL_LINE_CHARS);
    expect(lines[2]?.endsWith("…")).toBe(true);
  });
});

describe("explaining a VM failure", () => {
  let dir: string;
  const logs = () => ({ console: join(dir, "console.log"), vmmLog: join(dir, "vmm.log") });
  const failure = (stage: string, message = "the guest's SSH at 172.30.0.2:22 did not answer within 60000 ms") =>
    Object.assign(new DeadlineExceededError(message, { reason: "SSH_TIMEOUT" }), { failedStage: stage });
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), "banger-readiness-"))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it("keeps the console's last 20 lines and the VMM log's last 10, and names the cause", async () => {
    writeFileSync(join(dir, "console.log"), `${PANIC_NO_ROOT}\n`);
    writeFileSync(join(dir, "vmm.log"), Array.from({ length: 15 }, (_, i) => `qemu ${i}`).join("\n"));
    const error = failure("wait-ssh");
    await explainVmFailure(error, logs());
    expect(error.message).toBe(
      "the guest's SSH at 172.30.0.2:22 did not answer within 60000 ms: the kernel could not mount the root disk " +
        "(no initramfs, or its driver for the disk is missing)",
    );
    const tail = (error as { logTail?: string }).logTail?.split("\n") ?? [];
    expect(tail).toHaveLength(30);
    expect(tail[19]).toBe(
      "console: [    1.215000] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0) ]---",
    );
    expect(tail.slice(20)).toEqual(Array.from({ length: 10 }, (_, i) => `vmm: qemu ${i + 5}`));
  });

  it("reads the relay's predecessor file too, and only the end of a large log", async () => {
    writeFileSync(
      join(dir, "console.log.1"),
      `${"old line\n".repeat(100_000)}banger-init: the image has no /usr/sbin/sshd or /usr/sbin/dropbear: nothing to log in with\n`,
    );
    writeFileSync(join(dir, "console.log"), "after the rotation\n");
    const error = failure("wait-ssh");
    await explainVmFailure(error, logs());
    expect(error.message).toMatch(/: no SSH server in the image/);
    const tail = (error as { logTail?: string }).logTail?.split("\n") ?? [];
    expect(tail.at(-1)).toBe("console: after the rotation");
    expect(tail).toHaveLength(20);
  });

  it("says when the guest printed nothing while it was waited for; leaves other stages' messages alone", async () => {
    const waiting = failure("wait-ssh");
    await explainVmFailure(waiting, logs());
    expect(waiting.message).toMatch(new RegExp(`: ${SILENT_GUEST_HINT.replace(/[()=]/g, "\\$&")}$`));
    expect((waiting as { logTail?: string }).logTail).toBe(undefined);
    const launch = failure("launch-vmm", "the VMM exited (code 1) before it opened its socket");
    writeFileSync(join(dir, "vmm.log"), "qemu-system-x86_64: -drive: Could not open 'root.ext4'\n");
    await explainVmFailure(launch, logs());
    expect(launch.message).toBe("the VMM exited (code 1) before it opened its socket");
    expect((launch as { logTail?: string }).logTail).toBe(
      "vmm: qemu-system-x86_64: -drive: Could not open 'root.ext4'",
    );
    const disk = failure("root-disk", "no space");
    await explainVmFailure(disk, logs());
    expect([disk.message, (disk as { logTail?: string }).logTail]).toEqual(["no space", undefined]);
  });

  it("reads a log's end from the middle without its cut first line", async () => {
    writeFileSync(join(dir, "big.log"), `${"a".repeat(100)}\nsecond\nthird\n`);
    expect(await readLogEnd(join(dir, "big.log"), 20)).toBe("second\nthird\n");
    writeFileSync(join(dir, "small.log"), "one\ntwo\n");
    expect(await readLogEnd(join(dir, "small.log"), 8)).toBe("one\ntwo\n");
    expect(await readLogEnd(join(dir, "missing.log"))).toBe("");
  });
});

describe("waiting while the VMM runs", () => {
  it("ends with VMM_EXITED when the VMM is gone, and stops the wait", async () => {
    let running = true;
    let waitAborted = false;
    const wait = (signal: AbortSignal) =>
      new Promise<never>((_, reject) =>
        signal.addEventListener("abort", () => {
          waitAborted = true;
          reject(new Error("aborted"));
        }),
      );
    setTimeout(() => (running = false), 30);
    await expect(
      whileVmmRuns(wait, () => Promise.resolve(running), new AbortController().signal, 10),
    ).rejects.toMatchObject({
      kind: "failed-precondition",
      reason: "VMM_EXITED",
    });
    expect(waitAborted).toBe(true);
  });

  it("returns what the wait returns; a failed look at the VMM is not an exit", async () => {
    const wait = () => new Promise<string>((resolve) => setTimeout(() => resolve("ready"), 50));
    expect(
      await whileVmmRuns(wait, () => Promise.reject(new Error("helper down")), new AbortController().signal, 5),
    ).toBe("ready");
  });

  it("passes the caller's cancel on to the wait", async () => {
    const controller = new AbortController();
    const wait = (signal: AbortSignal) =>
      new Promise<never>((_, reject) => signal.addEventListener("abort", () => reject(signal.reason as Error)));
    const waiting = whileVmmRuns(wait, () => Promise.resolve(true), controller.signal, 5);
    controller.abort(new Error("cancelled"));
    await expect(waiting).rejects.toThrow("cancelled");
  });
});
