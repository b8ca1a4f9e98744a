import { openSync, closeSync, mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  CLK_TCK,
  bootTimeSeconds,
  cpuKhz,
  dateToStartTime,
  listPids,
  parseStat,
  readCmdline,
  readCredentials,
  readStat,
  spawnDetached,
  startTimeToDate,
} from "./proc.js";

const NOBODY = 65534;
const root = mkdtempSync(join(tmpdir(), "banger-proc-"));
const started: number[] = [];

afterAll(() => {
  for (const pid of started) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  rmSync(root, { recursive: true, force: true });
});

/** A stat line as the kernel writes it, with `comm` and start time chosen by the test. */
function statLine(pid: number, comm: string, startTime: number, state = "S"): string {
  const after = [state, "1", String(pid), String(pid), "0", "-1", "4194560", "0", "0", "0", "0", "7", "5", "0", "0"];
  // fields 3..17 above (14 utime, 15 stime), then 18 priority, 19 nice, 20 threads, 21 itrealvalue, 22 starttime, 23 vsize
  return `${pid} (${comm}) ${[...after, "20", "0", "1", "0", String(startTime), "1000", "0"].join(" ")}\n`;
}

function fakeProc(): string {
  const procRoot = mkdtempSync(join(root, "proc-"));
  const add = (pid: number, files: Record<string, string>) => {
    mkdirSync(join(procRoot, String(pid)));
    for (const [name, content] of Object.entries(files)) writeFileSync(join(procRoot, String(pid), name), content);
  };
  add(42, {
    stat: statLine(42, "evil) S 1 2 3 (name", 123456, "R"),
    cmdline: "/usr/bin/firecracker\0--api-sock\0/run/x y/sock\0",
    status: "Name:\tx\nUid:\t1000\t1001\t1002\t1003\nGid:\t50\t51\t52\t53\nGroups:\t4 24 \n",
  });
  add(7, { stat: statLine(7, "kworker/0:1", 5), cmdline: "", status: "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\n" });
  mkdirSync(join(procRoot, "self"));
  mkdirSync(join(procRoot, "sys"));
  writeFileSync(join(procRoot, "stat"), "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n");
  writeFileSync(
    join(procRoot, "cpuinfo"),
    "processor\t: 0\nmodel name\t: Test\ncpu MHz\t\t: 2596.130\n\nprocessor\t: 1\n",
  );
  return procRoot;
}

describe("parseStat", () => {
  it("reads the fields after the LAST ')' so a comm with spaces and parentheses cannot shift them", () => {
    const stat = parseStat(statLine(42, "a) R 9 9 9 (b", 987654321, "S"));
    expect(stat).toEqual({
      pid: 42,
      comm: "a) R 9 9 9 (b",
      state: "S",
      ppid: 1,
      pgrp: 42,
      session: 42,
      startTime: 987654321n,
      cpuTicks: 12,
    });
  });

  it("keeps start times beyond 2^53 exact", () => {
    expect(parseStat(statLine(3, "x", 0).replace(" 0 1000 0\n", " 9007199254740993 1000 0\n")).startTime).toBe(
      9007199254740993n,
    );
  });

  it("refuses text that is not a stat line", () => {
    expect(() => parseStat("garbage")).toThrow(SyntaxError);
    expect(() => parseStat("1 (x) S 1")).toThrow(SyntaxError);
  });
});

describe("readers on a crafted proc root", () => {
  const procRoot = fakeProc();

  it("read stat, cmdline and credentials of a process", async () => {
    expect(await readStat(42, procRoot)).toMatchObject({
      pid: 42,
      comm: "evil) S 1 2 3 (name",
      state: "R",
      startTime: 123456n,
    });
    expect(await readCmdline(42, procRoot)).toEqual(["/usr/bin/firecracker", "--api-sock", "/run/x y/sock"]);
    expect(await readCredentials(42, procRoot)).toEqual({
      uid: { real: 1000, effective: 1001, saved: 1002, filesystem: 1003 },
      gid: { real: 50, effective: 51, saved: 52, filesystem: 53 },
      groups: [4, 24],
    });
    expect(await readCmdline(7, procRoot)).toEqual([]);
  });

  it("read a process that is not there as undefined", async () => {
    expect(await readStat(99, procRoot)).toBeUndefined();
    expect(await readCmdline(99, procRoot)).toBeUndefined();
    expect(await readCredentials(99, procRoot)).toBeUndefined();
  });

  it("never turn something that is not a pid into a path", async () => {
    for (const pid of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 40]) {
      await expect(readStat(pid, procRoot)).rejects.toThrow(RangeError);
    }
  });

  it("list only numeric entries", async () => {
    expect(await listPids(procRoot)).toEqual([7, 42]);
  });

  it("convert start times to dates and back through btime", () => {
    expect(bootTimeSeconds(procRoot)).toBe(1_700_000_000);
    const date = startTimeToDate(123_456n, procRoot);
    expect(date.getTime()).toBe(1_700_000_000_000 + (123_456 * 1000) / CLK_TCK);
    expect(dateToStartTime(date, procRoot)).toBe(123_456n);
    expect(dateToStartTime(new Date(date.getTime() + 4), procRoot)).toBe(123_456n);
  });

  it("read the CPU clock in kHz, and nothing where cpuinfo does not list it", () => {
    expect(cpuKhz(procRoot)).toBe(2_596_130);
    expect(cpuKhz(join(root, "nowhere"))).toBeUndefined();
  });
});

describe("readers on the real /proc", () => {
  it("see this process as it is", async () => {
    const stat = await readStat(process.pid);
    expect(stat?.pid).toBe(process.pid);
    expect(stat?.ppid).toBe(process.ppid);
    expect(stat?.startTime).toBeGreaterThan(0n);
    // Started before now, and not before the machine booted.
    const started = startTimeToDate(stat?.startTime ?? 0n);
    expect(started.getTime()).toBeLessThanOrEqual(Date.now() + 1000);
    expect(started.getTime()).toBeGreaterThanOrEqual(bootTimeSeconds() * 1000);
    expect((await readCmdline(process.pid))?.[0]).toBe(process.argv0);
    expect((await readCredentials(process.pid))?.uid.real).toBe(process.getuid?.());
    expect(await listPids()).toContain(process.pid);
  });
});

describe("spawnDetached", () => {
  it("starts a process as another uid, in its own session, that exits on its own terms", async () => {
    const log = join(root, "sleep.log");
    const fd = openSync(log, "a", 0o600);
    const child = await spawnDetached({
      argv: ["/bin/sleep", "30"],
      uid: NOBODY,
      gid: NOBODY,
      cwd: "/",
      stdout: fd,
      stderr: fd,
      env: { PATH: "/usr/bin:/bin" },
    });
    closeSync(fd);
    started.push(child.pid);
    const stat = await readStat(child.pid);
    expect(stat?.session).toBe(child.pid); // setsid: not in the helper's session or process group
    expect(stat?.pgrp).toBe(child.pid);
    const credentials = await readCredentials(child.pid);
    expect(credentials?.uid).toEqual({ real: NOBODY, effective: NOBODY, saved: NOBODY, filesystem: NOBODY });
    expect(credentials?.gid.real).toBe(NOBODY);
    expect(credentials?.groups).toEqual([]); // root's supplementary groups are not inherited
    expect(await readCmdline(child.pid)).toEqual(["/bin/sleep", "30"]);
    process.kill(child.pid, "SIGTERM");
    expect(await child.exited).toEqual({ code: null, signal: "SIGTERM" });
  });

  it("rejects with the spawn error when the binary is not there", async () => {
    await expect(
      spawnDetached({ argv: ["/nonexistent/vmm"], uid: NOBODY, gid: NOBODY, cwd: "/", stdout: 1, stderr: 2, env: {} }),
    ).rejects.toMatchObject({ code: "ENOENT" });
  });
});
