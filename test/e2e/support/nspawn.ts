/**
 * A throwaway machine with systemd as PID 1, for tests of what banger does
 * with a live systemd: this host's own root file system under an overlay whose
 * upper layer is a tmpfs, booted by systemd-nspawn in its own network
 * namespace. Whatever the container writes (units, accounts, /var/lib/banger)
 * is gone with the tmpfs; the host is not changed.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Run as this user (name) with its groups, HOME and USER; default root. */
  user?: { name: string; uid: number; gid: number; home: string };
  /** Working directory inside the container. */
  cwd?: string;
  timeoutMs?: number;
}

export interface Container {
  /** The container's PID 1 (systemd), as a pid of this host. */
  readonly leader: number;
  /** The container's root as this host sees it: files written under it appear inside (and die with it). */
  readonly rootDir: string;
  /** Powers the container off and boots it again on the same file system (a host reboot). */
  reboot(): Promise<void>;
  /** Runs argv inside the container (all its namespaces). */
  run(argv: readonly string[], options?: RunOptions): Promise<RunResult>;
  /** Powers the container off and removes the overlay. */
  stop(): Promise<void>;
}

function mount(args: string[]): void {
  const result = spawnSync("mount", args, { encoding: "utf8" });
  if (result.status !== 0) throw new Error(`mount ${args.join(" ")}: ${result.stderr}`);
}

function childrenOf(pid: number): number[] {
  const result = spawnSync("pgrep", ["-P", String(pid)], { encoding: "utf8" });
  return result.stdout
    .split("\n")
    .filter((line) => line !== "")
    .map(Number);
}

function commOf(pid: number): string {
  return spawnSync("cat", [`/proc/${pid}/comm`], { encoding: "utf8" }).stdout.trim();
}

function run(argv: readonly string[], timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    // Its own process group: a timeout kills what nsenter started inside too, not only nsenter.
    const child = spawn(argv[0] ?? "", argv.slice(1), { stdio: ["ignore", "pipe", "pipe"], detached: true });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => {
      try {
        process.kill(-(child.pid ?? 0), "SIGKILL");
      } catch {
        // already gone
      }
    }, timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * Boots the container and waits until its systemd has finished starting up.
 * `binds` are host paths shown read-only inside, at the same place or at `SOURCE:TARGET`'s target.
 */
export async function bootContainer(options: {
  binds: readonly string[];
  /** Host device nodes shown inside (nspawn's /dev has no loop devices). */
  devices?: readonly string[];
  log: (line: string) => void;
}): Promise<Container> {
  // systemd-nspawn leaves its (empty) bookkeeping directories in /run/systemd/nspawn behind.
  const nspawnRunDir = "/run/systemd/nspawn";
  const hadNspawnRunDir = existsSync(nspawnRunDir);
  const base = mkdtempSync(join(tmpdir(), "banger-nspawn-"));
  mount(["-t", "tmpfs", "-o", "mode=0755", "tmpfs", base]);
  const merged = join(base, "merged");
  for (const dir of ["upper", "work", "merged"]) mkdirSync(join(base, dir));
  mount([
    "-t",
    "overlay",
    "overlay",
    "-o",
    `lowerdir=/,upperdir=${join(base, "upper")},workdir=${join(base, "work")}`,
    merged,
  ]);
  const teardownMounts = () => {
    spawnSync("umount", [merged]);
    spawnSync("umount", [base]);
    rmSync(base, { recursive: true, force: true });
    if (!hadNspawnRunDir) spawnSync("find", [nspawnRunDir, "-depth", "-type", "d", "-empty", "-delete"]);
  };

  let output = "";
  let nspawn: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let pid1 = 0;

  const inside = (argv: readonly string[], opts: RunOptions = {}) => {
    const user = opts.user;
    const prefix = user
      ? ["setpriv", `--reuid=${user.uid}`, `--regid=${user.gid}`, "--init-groups", "--reset-env"]
      : [];
    const env = user ? [`HOME=${user.home}`, `USER=${user.name}`, `LOGNAME=${user.name}`] : [];
    return run(
      [
        "nsenter",
        `--target=${pid1}`,
        "--all",
        "--",
        ...prefix,
        "env",
        ...(opts.cwd ? [`--chdir=${opts.cwd}`] : []),
        ...env,
        ...argv,
      ],
      opts.timeoutMs ?? 120_000,
    );
  };

  /** Boots the container on the overlay and waits until its systemd has started up. */
  const boot = async () => {
    output = "";
    const child = spawn(
      "systemd-nspawn",
      [
        "--quiet",
        `--directory=${merged}`,
        "--boot",
        "--register=no",
        "--keep-unit",
        "--machine=banger-live",
        // Its own network namespace: no clash with this host's addresses or ports, and CAP_NET_ADMIN inside.
        "--private-network",
        ...options.binds.map((path) => `--bind-ro=${path}`),
        ...(options.devices ?? []).map((path) => `--bind=${path}`),
        // Arguments to the container's systemd: boot no further than basic.target (sockets, no getty,
        // no services of this host's own).
        "--",
        "--unit=basic.target",
      ],
      { stdio: ["ignore", "pipe", "pipe"], detached: true },
    );
    nspawn = child;
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
    exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
    const deadline = Date.now() + 90_000;
    let leader: number | undefined;
    while (leader === undefined) {
      if (child.exitCode !== null) throw new Error(`systemd-nspawn exited ${child.exitCode}:\n${output}`);
      if (Date.now() > deadline) throw new Error(`systemd did not start in the container:\n${output}`);
      leader = childrenOf(child.pid ?? 0).find((pid) => commOf(pid) === "systemd");
      if (leader === undefined) await sleep(100);
    }
    pid1 = leader;
    for (;;) {
      // "running", or "degraded" where a unit of this host's own failed in the container.
      const state = await inside(["systemctl", "is-system-running", "--wait"], { timeoutMs: 60_000 });
      const answer = state.stdout.trim();
      if (answer === "running" || answer === "degraded") break;
      if (Date.now() > deadline) throw new Error(`the container's systemd is ${answer}:\n${output}`);
      await sleep(200);
    }
  };

  const powerOff = async () => {
    const child = nspawn;
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM"); // systemd-nspawn asks the container's systemd to power off
      const done = await Promise.race([exited.then(() => true), sleep(30_000).then(() => false)]);
      if (!done) {
        child.kill("SIGKILL");
        await exited;
      }
    }
  };

  const stop = async () => {
    await powerOff();
    teardownMounts();
  };

  try {
    await boot();
    options.log(
      `systemd ${spawnSync("systemctl", ["--version"], { encoding: "utf8" }).stdout.split("\n")[0] ?? ""} is PID 1 in the container (host pid ${pid1})`,
    );
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    get leader() {
      return pid1;
    },
    rootDir: merged,
    run: inside,
    async reboot() {
      await powerOff();
      await boot();
    },
    stop,
  };
}

/** Whether `path` is on the host's root file system (then the overlay shows it without a bind). */
export function onRootFileSystem(path: string): boolean {
  return statSync(path).dev === statSync("/").dev;
}
