/**
 * The host effects of `banger system`: running tools (systemctl, systemd-sysusers,
 * sysctl, getent) and asking whether systemd runs the machine. Everything else
 * in system/ decides; this runs.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";

export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface SystemHost {
  /** Runs a tool (argv, no shell) and returns its exit code and output. */
  run(argv: readonly string[]): RunResult;
  /** Runs a tool and throws, naming it and quoting its stderr, unless it exits 0. */
  mustRun(argv: readonly string[]): string;
  /** Whether systemd is PID 1, and what PID 1 is (for the message when it is not). */
  systemd(): { readonly running: boolean; readonly pid1: string };
  /** The effective uid of this process. */
  euid(): number;
}

export function createSystemHost(): SystemHost {
  const run = (argv: readonly string[]): RunResult => {
    const [command = "", ...args] = argv;
    const result = spawnSync(command, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    if (result.error) {
      const missing = (result.error as NodeJS.ErrnoException).code === "ENOENT";
      return { code: 127, stdout: "", stderr: missing ? `${command}: not found` : result.error.message };
    }
    return { code: result.status ?? 128, stdout: result.stdout, stderr: result.stderr };
  };
  return {
    run,
    mustRun(argv) {
      const result = run(argv);
      if (result.code !== 0) {
        const why = result.stderr.trim() || result.stdout.trim() || `exit code ${result.code}`;
        throw new Error(`${argv.join(" ")} failed: ${why}`);
      }
      return result.stdout;
    },
    systemd() {
      // sd_booted(3): systemd is PID 1 exactly when /run/systemd/system is a directory.
      let running = false;
      try {
        running = statSync("/run/systemd/system").isDirectory();
      } catch {
        running = false;
      }
      let pid1 = "unknown";
      try {
        pid1 = readFileSync("/proc/1/comm", "utf8").trim() || pid1;
      } catch {
        // /proc/1 hidden: say unknown
      }
      return { running, pid1 };
    },
    euid: () => process.geteuid?.() ?? -1,
  };
}

/** A passwd entry. */
export interface UserEntry {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  readonly home: string;
}

/** A user of the running system by name or uid (through NSS: `getent passwd`). */
export function lookupUser(host: SystemHost, nameOrUid: string): UserEntry | undefined {
  const result = host.run(["getent", "passwd", nameOrUid]);
  if (result.code !== 0) return undefined;
  return parsePasswdLine(result.stdout.split("\n")[0] ?? "");
}

/** A group's gid on the running system (`getent group`). */
export function lookupGroupId(host: SystemHost, name: string): number | undefined {
  const result = host.run(["getent", "group", name]);
  if (result.code !== 0) return undefined;
  const gid = Number(result.stdout.split(":")[2]);
  return Number.isInteger(gid) ? gid : undefined;
}

/** A user from a passwd file (an install root's `/etc/passwd`). */
export function userFromFile(passwdFile: string, name: string): UserEntry | undefined {
  if (!existsSync(passwdFile)) return undefined;
  return readFileSync(passwdFile, "utf8")
    .split("\n")
    .map(parsePasswdLine)
    .find((entry) => entry?.name === name);
}

/** A group's gid from a group file (an install root's `/etc/group`). */
export function groupIdFromFile(groupFile: string, name: string): number | undefined {
  if (!existsSync(groupFile)) return undefined;
  for (const line of readFileSync(groupFile, "utf8").split("\n")) {
    const [groupName, , gid] = line.split(":");
    if (groupName === name && Number.isInteger(Number(gid)) && gid !== "") return Number(gid);
  }
  return undefined;
}

function parsePasswdLine(line: string): UserEntry | undefined {
  const [name, , uid, gid, , home] = line.split(":");
  if (!name || uid === undefined || gid === undefined || home === undefined) return undefined;
  const entry = { name, uid: Number(uid), gid: Number(gid), home };
  return Number.isInteger(entry.uid) && Number.isInteger(entry.gid) ? entry : undefined;
}
