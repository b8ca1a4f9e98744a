/**
 * A real OpenSSH server on 127.0.0.1 standing in for a guest in tests (this
 * machine boots no guests; test/e2e does with QEMU). One client key per kind
 * of guest: "full" sees the host's tools (GNU tar, git); "busybox" has a PATH
 * of busybox applets only, like a minimal guest (no git, busybox tar);
 * "stalled" is a busybox guest whose `tar` waits for `releaseStalled()`
 * (announcing itself in `stalledStarted`), so a transfer can be caught in
 * the middle without timing anything.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { requireTools, type Need } from "@banger/common/testing";
import type { GuestTarget } from "../src/core/guest-exec.js";

const SSHD = "/usr/sbin/sshd";
const BUSYBOX = ["/usr/bin/busybox", "/bin/busybox"].find((path) => existsSync(path));
/** The stalled guest's shell: busybox's own sh would run its tar applet whatever PATH says. */
const DASH = ["/usr/bin/dash", "/bin/dash"].find((path) => existsSync(path));

/** What the stand-in guest runs on the host: OpenSSH's server and key tools, busybox (a minimal guest's tools), dash. */
const SSHD_TOOLS = [SSHD, "ssh-keygen", "ssh-keyscan", "busybox", "dash"];

/**
 * Whether `suite` must skip its sshd tests here (then one SKIPPING line says
 * why): it needs root (sshd logs in as root), {@link SSHD_TOOLS} and `extra`.
 */
export function sshdSkip(suite: string, extra: readonly Need[] = []): boolean {
  if (process.getuid?.() !== 0) {
    console.warn(`SKIPPING ${suite}: needs root (sshd logs in as root)`);
    return true;
  }
  return requireTools(suite, [...SSHD_TOOLS, ...extra]).length > 0;
}

export type GuestKind = "full" | "busybox" | "stalled";

export interface TestGuest {
  /** A scratch directory; guest paths of tests go under `<dir>/guest`. */
  readonly dir: string;
  target(kind: GuestKind): GuestTarget;
  /** Exists once the stalled guest's tar has been started. */
  readonly stalledStarted: string;
  releaseStalled(): void;
  stop(): void;
}

export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** `maxSessions`: sshd's MaxSessions (commands at once on one connection; OpenSSH's default is 10). */
export async function startTestGuest(options: { maxSessions?: number } = {}): Promise<TestGuest> {
  if (BUSYBOX === undefined || DASH === undefined) throw new Error("cannot start sshd: busybox or dash is missing");
  const dir = mkdtempSync(join(tmpdir(), "banger-guest-"));
  mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  const kinds: GuestKind[] = ["full", "busybox", "stalled"];
  for (const name of ["host", ...kinds]) {
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(dir, name)]);
  }
  const applets = join(dir, "busybox-bin");
  mkdirSync(applets);
  execFileSync(BUSYBOX, ["--install", "-s", applets]);
  const stalledBin = join(dir, "stalled-bin");
  mkdirSync(stalledBin);
  const started = join(dir, "stalled-started");
  const release = join(dir, "stalled-release");
  writeFileSync(
    join(stalledBin, "tar"),
    `#!${BUSYBOX} sh\n: > ${started}\nwhile [ ! -e ${release} ]; do ${BUSYBOX} sleep 0.1; done\nexec ${BUSYBOX} tar "$@"\n`,
  );
  chmodSync(join(stalledBin, "tar"), 0o755);
  symlinkSync(DASH, join(stalledBin, "sh"));
  const pub = (name: string) => readFileSync(join(dir, `${name}.pub`), "utf8").trim();
  writeFileSync(
    join(dir, "authorized_keys"),
    [
      pub("full"),
      `environment="PATH=${applets}" ${pub("busybox")}`,
      `environment="PATH=${stalledBin}:${applets}" ${pub("stalled")}`,
    ].join("\n") + "\n",
  );
  const port = await freePort();
  writeFileSync(
    join(dir, "sshd_config"),
    [
      `Port ${port}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${join(dir, "host")}`,
      `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
      "PermitRootLogin prohibit-password",
      "PermitUserEnvironment yes",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "UsePAM no",
      "StrictModes no",
      "MaxStartups 50",
      ...(options.maxSessions === undefined ? [] : [`MaxSessions ${options.maxSessions}`]),
      `PidFile ${join(dir, "sshd.pid")}`,
    ].join("\n") + "\n",
  );
  const sshd: ChildProcess = spawn(SSHD, ["-D", "-e", "-f", join(dir, "sshd_config")], { stdio: "ignore" });
  for (let i = 0; i < 100; i++) {
    if (spawnSync("ssh-keyscan", ["-p", String(port), "127.0.0.1"], { encoding: "utf8" }).stdout.includes("ssh-"))
      break;
    await new Promise((r) => setTimeout(r, 50));
  }
  mkdirSync(join(dir, "guest"));
  return {
    dir,
    target: (kind) => ({
      host: "127.0.0.1",
      port,
      hostKeyAlias: "box.vm",
      privateKey: readFileSync(join(dir, kind)),
      knownHostsFile: join(dir, "known_hosts"),
    }),
    stalledStarted: started,
    releaseStalled: () => writeFileSync(release, ""),
    stop: () => {
      writeFileSync(release, "");
      sshd.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
