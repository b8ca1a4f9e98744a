/**
 * Processes as the kernel describes them in /proc, and the one way the helper
 * starts a process that outlives it (a VM's VMM). Every reader takes the proc
 * root so tests can hand it a directory of crafted files; a process that is
 * gone (or goes while it is read) reads as `undefined`, never as an error.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";

export const DEFAULT_PROC_ROOT = "/proc";

/** USER_HZ: the unit of the times in /proc/<pid>/stat (100 on every Linux ABI banger runs on). */
export const CLK_TCK = 100;

/** The fields of /proc/<pid>/stat the helper uses. */
export interface ProcStat {
  readonly pid: number;
  /** The command name (field 2) without its parentheses; may hold spaces and parentheses. */
  readonly comm: string;
  /** One letter: R, S, D, Z, T, … */
  readonly state: string;
  readonly ppid: number;
  readonly pgrp: number;
  readonly session: number;
  /** Field 22: clock ticks (CLK_TCK) since boot at which the process started. */
  readonly startTime: bigint;
  /** Fields 14 + 15: CPU time used, user plus system, in clock ticks. */
  readonly cpuTicks: number;
}

/** Real, effective, saved and filesystem ids from /proc/<pid>/status. */
export interface ProcIds {
  readonly real: number;
  readonly effective: number;
  readonly saved: number;
  readonly filesystem: number;
}

export interface ProcCredentials {
  readonly uid: ProcIds;
  readonly gid: ProcIds;
  /** Supplementary groups. */
  readonly groups: readonly number[];
}

/** Largest pid Linux can hand out (PID_MAX_LIMIT on 64-bit). */
const PID_MAX_LIMIT = 4_194_304;

/** Whether `pid` can name a process at all; anything else never becomes a /proc path. */
export function isPid(pid: number): boolean {
  return Number.isSafeInteger(pid) && pid > 0 && pid <= PID_MAX_LIMIT;
}

function procPath(procRoot: string, pid: number, file: string): string {
  if (!isPid(pid)) throw new RangeError(`not a pid: ${pid}`);
  return join(procRoot, String(pid), file);
}

/**
 * Parses /proc/<pid>/stat. The command name may contain spaces and `)`, so
 * the fields are read after the LAST `)`.
 */
export function parseStat(text: string): ProcStat {
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  if (open < 0 || close < open) throw new SyntaxError("malformed /proc/<pid>/stat: no (comm)");
  const pid = Number(text.slice(0, open).trim());
  // Fields 3… (state is field 3, start time field 22).
  const rest = text
    .slice(close + 1)
    .trim()
    .split(/\s+/);
  const field = (n: number): string => {
    const value = rest[n - 3];
    if (value === undefined) throw new SyntaxError(`malformed /proc/<pid>/stat: no field ${n}`);
    return value;
  };
  const startTime = field(22);
  if (!/^\d+$/.test(startTime) || !Number.isSafeInteger(pid)) {
    throw new SyntaxError("malformed /proc/<pid>/stat: bad pid or start time");
  }
  return {
    pid,
    comm: text.slice(open + 1, close),
    state: field(3),
    ppid: Number(field(4)),
    pgrp: Number(field(5)),
    session: Number(field(6)),
    startTime: BigInt(startTime),
    cpuTicks: Number(field(14)) + Number(field(15)),
  };
}

/** /proc/<pid>/cmdline as an argument vector (empty for kernel threads and zombies). */
export function parseCmdline(raw: Buffer | string): string[] {
  const text = typeof raw === "string" ? raw : raw.toString("utf8");
  if (text === "") return [];
  const parts = text.split("\0");
  if (parts[parts.length - 1] === "") parts.pop();
  return parts;
}

function parseIds(line: string | undefined): ProcIds {
  const [real, effective, saved, filesystem] = (line ?? "").trim().split(/\s+/).map(Number);
  if (real === undefined || effective === undefined || saved === undefined || filesystem === undefined) {
    throw new SyntaxError("malformed /proc/<pid>/status id line");
  }
  return { real, effective, saved, filesystem };
}

export function parseStatus(text: string): ProcCredentials {
  const fields = new Map<string, string>();
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1));
  }
  const groups = (fields.get("Groups") ?? "").trim();
  return {
    uid: parseIds(fields.get("Uid")),
    gid: parseIds(fields.get("Gid")),
    groups: groups === "" ? [] : groups.split(/\s+/).map(Number),
  };
}

/** Reads a /proc file of `pid`; undefined when the process is gone. */
async function readProcFile(procRoot: string, pid: number, file: string): Promise<Buffer | undefined> {
  try {
    return await readFile(procPath(procRoot, pid, file));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    // ESRCH: the process exited between the open and the read.
    if (code === "ENOENT" || code === "ESRCH") return undefined;
    throw error;
  }
}

export async function readStat(pid: number, procRoot = DEFAULT_PROC_ROOT): Promise<ProcStat | undefined> {
  const raw = await readProcFile(procRoot, pid, "stat");
  return raw === undefined ? undefined : parseStat(raw.toString("utf8"));
}

export async function readCmdline(pid: number, procRoot = DEFAULT_PROC_ROOT): Promise<string[] | undefined> {
  const raw = await readProcFile(procRoot, pid, "cmdline");
  return raw === undefined ? undefined : parseCmdline(raw);
}

export async function readCredentials(pid: number, procRoot = DEFAULT_PROC_ROOT): Promise<ProcCredentials | undefined> {
  const raw = await readProcFile(procRoot, pid, "status");
  return raw === undefined ? undefined : parseStatus(raw.toString("utf8"));
}

/** Resident memory (VmRSS in /proc/<pid>/status) in bytes; undefined when gone (0 for a kernel thread). */
export async function readRssBytes(pid: number, procRoot = DEFAULT_PROC_ROOT): Promise<number | undefined> {
  const raw = await readProcFile(procRoot, pid, "status");
  if (raw === undefined) return undefined;
  const kib = /^VmRSS:\s+(\d+) kB$/m.exec(raw.toString("utf8"))?.[1];
  return kib === undefined ? 0 : Number(kib) * 1024;
}

/** Every pid in the proc root (numeric entries only). */
export async function listPids(procRoot = DEFAULT_PROC_ROOT): Promise<number[]> {
  const entries = await readdir(procRoot);
  return entries
    .filter((name) => /^[1-9]\d*$/.test(name))
    .map(Number)
    .filter(isPid)
    .sort((a, b) => a - b);
}

/** `btime` from /proc/stat: the boot time in whole seconds since the epoch. */
export function bootTimeSeconds(procRoot = DEFAULT_PROC_ROOT): number {
  const line = readFileSync(join(procRoot, "stat"), "utf8")
    .split("\n")
    .find((l) => l.startsWith("btime "));
  const seconds = Number(line?.slice("btime ".length).trim());
  if (line === undefined || !Number.isSafeInteger(seconds)) throw new SyntaxError("no btime in /proc/stat");
  return seconds;
}

/**
 * A process start time (ticks since boot) as a wall-clock Date: btime +
 * ticks / CLK_TCK. btime is recomputed by the kernel from the wall clock, so
 * a clock step of a second or more moves every such date by the same amount.
 */
export function startTimeToDate(ticks: bigint, procRoot = DEFAULT_PROC_ROOT): Date {
  const ms = BigInt(bootTimeSeconds(procRoot)) * 1000n + (ticks * 1000n) / BigInt(CLK_TCK);
  return new Date(Number(ms));
}

/** The inverse of startTimeToDate (rounded to the nearest tick). */
export function dateToStartTime(date: Date, procRoot = DEFAULT_PROC_ROOT): bigint {
  const sinceBootMs = BigInt(Math.round(date.getTime())) - BigInt(bootTimeSeconds(procRoot)) * 1000n;
  const msPerTick = BigInt(1000 / CLK_TCK);
  return (sinceBootMs + msPerTick / 2n) / msPerTick;
}

/** The first CPU's clock in kHz from /proc/cpuinfo (`cpu MHz`), or undefined where it is not listed. */
export function cpuKhz(procRoot = DEFAULT_PROC_ROOT): number | undefined {
  let text: string;
  try {
    text = readFileSync(join(procRoot, "cpuinfo"), "utf8");
  } catch {
    return undefined;
  }
  const match = /^cpu MHz\s*:\s*(\d+(?:\.\d+)?)\s*$/m.exec(text);
  if (!match?.[1]) return undefined;
  const khz = Math.round(Number(match[1]) * 1000);
  return khz > 0 ? khz : undefined;
}

/** How to start a process that outlives the helper. */
export interface DetachedSpawnOptions {
  /** argv[0] is the executable; no shell, no PATH search surprises (pass an absolute path). */
  readonly argv: readonly string[];
  readonly uid: number;
  readonly gid: number;
  readonly cwd: string;
  /** An open file descriptor that becomes the process's stdin (default: /dev/null). */
  readonly stdin?: number;
  /** Open file descriptors that become the process's stdout and stderr. */
  readonly stdout: number;
  readonly stderr: number;
  readonly env: Readonly<Record<string, string>>;
}

export interface DetachedProcess {
  readonly pid: number;
  /** Settles when the process exits, as long as the helper runs. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export type SpawnDetached = (options: DetachedSpawnOptions) => Promise<DetachedProcess>;

/**
 * Starts a process in its own session (setsid), as `uid`/`gid` with no
 * supplementary groups (libuv drops them), stdio on the given files, and
 * unreferenced: the helper neither waits for it nor takes it down on exit.
 * Resolves once the kernel has exec'd it; rejects with the spawn error
 * (ENOENT, EACCES, …) otherwise.
 */
export const spawnDetached: SpawnDetached = (options) => {
  const [command, ...args] = options.argv;
  if (command === undefined) return Promise.reject(new TypeError("empty argv"));
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      detached: true,
      stdio: [options.stdin ?? "ignore", options.stdout, options.stderr],
      uid: options.uid,
      gid: options.gid,
      cwd: options.cwd,
      env: { ...options.env },
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((settle) => {
      child.once("exit", (code, signal) => settle({ code, signal }));
    });
    child.once("error", reject);
    child.once("spawn", () => {
      child.removeListener("error", reject);
      child.on("error", () => {}); // later errors (a failed kill) are not the launch's
      child.unref();
      if (child.pid === undefined) reject(new Error(`${command} started without a pid`));
      else resolve({ pid: child.pid, exited });
    });
  });
};
