/**
 * Kept SSH connections against a real OpenSSH server on 127.0.0.1 standing in for a guest: which
 * connection each command ran on is what the server tells it ($SSH_CONNECTION's client port).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { BangerError } from "@banger/common";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort, sshdSkip, startTestGuest, type TestGuest } from "../../test-support/sshd.js";
import { createGuestConnections, type GuestConnections } from "./guest-connections.js";
import { execInGuest, type GuestTarget } from "./guest-exec.js";

const canRun = !sshdSkip("kept guest connections");

let guest: TestGuest | undefined;
let single: TestGuest | undefined;
let base: GuestTarget;

beforeAll(async () => {
  if (!canRun) return;
  guest = await startTestGuest();
  base = { ...guest.target("full"), knownHostsFile: join(guest.dir, "known_hosts") };
  // One command at a time per connection: a second one beside it is refused its channel.
  single = await startTestGuest({ maxSessions: 1 });
});
afterAll(() => {
  guest?.stop();
  single?.stop();
});

const kept = (connections: GuestConnections, key = "box/1/1"): GuestTarget => ({
  ...base,
  reuse: { key, connections },
});

/** Runs `script` (sh) and gives its stdout and exit code. */
async function sh(target: GuestTarget, script: string, signal = new AbortController().signal) {
  let stdout = "";
  const exit = await execInGuest(
    target,
    { argv: ["sh", "-c", script], env: [], workingDir: "", user: "", stdin: new Uint8Array(), timeoutMs: undefined },
    { onStdout: (chunk) => (stdout += chunk.toString()), onStderr: () => undefined },
    signal,
  );
  return { stdout: stdout.trim(), code: exit.code };
}

/** The client port of the connection a command ran on. */
const portOf = async (target: GuestTarget) =>
  (await sh(target, 'echo "${SSH_CONNECTION#* }"')).stdout.split(" ")[0] ?? "";

/** The local ports of this process's established TCP connections to the test sshd (from /proc/net/tcp). */
function connectedPorts(serverPort = base.port): string[] {
  const hexPort = serverPort.toString(16).toUpperCase().padStart(4, "0");
  return readFileSync("/proc/net/tcp", "utf8")
    .split("\n")
    .slice(1)
    .map((line) => line.trim().split(/\s+/))
    .filter((f) => f[2] === `0100007F:${hexPort}` && f[3] === "01")
    .map((f) => String(parseInt((f[1] ?? "").split(":")[1] ?? "", 16)));
}

const until = async (check: () => boolean, what: string) => {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 25));
  if (!check()) throw new Error(`never: ${what}`);
};

describe.skipIf(!canRun)("kept guest connections (a real sshd on 127.0.0.1)", () => {
  it("run commands to one guest boot on one connection; without reuse, or for another boot, each makes its own", async () => {
    const connections = createGuestConnections();
    try {
      const target = kept(connections);
      const first = await portOf(target);
      expect(await portOf(target)).toBe(first);
      expect(await portOf(target)).toBe(first);
      expect(connections.size).toBe(1);
      expect(await portOf(kept(connections, "box/2/2"))).not.toBe(first);
      const [a, b] = [await portOf(base), await portOf(base)];
      expect(new Set([first, a, b]).size).toBe(3);
    } finally {
      connections.close();
    }
  });

  it("close a connection unused for the idle time", async () => {
    const connections = createGuestConnections({ idleMs: 200 });
    const target = kept(connections);
    const first = await portOf(target);
    expect(connections.size).toBe(1);
    await until(() => connections.size === 0 && !connectedPorts().includes(first), "the idle connection closed");
    expect(await portOf(target)).not.toBe(first);
    connections.close();
  });

  it("run a command once on a new connection when the kept one refuses its channel (the server's session limit)", async () => {
    const connections = createGuestConnections();
    const target: GuestTarget = {
      ...(single?.target("full") ?? base),
      knownHostsFile: join(single?.dir ?? "", "known_hosts"),
      reuse: { key: "box/1/1", connections },
    };
    const log = join(single?.dir ?? "", "guest", "ran");
    try {
      const port = await portOf(target);
      // The first holds the kept connection's one session; the second is refused a channel there.
      const results = await Promise.all([
        sh(target, `echo first >>${log}; sleep 1; echo "\${SSH_CONNECTION#* }"`),
        sh(target, `echo second >>${log}; echo "\${SSH_CONNECTION#* }"`),
      ]);
      expect(results.map((r) => r.code)).toEqual([0, 0]);
      // The two overlapped (one sleeps), and one connection holds one at a time: one was refused and moved.
      const ports = results.map((r) => r.stdout.split(" ")[0]);
      expect(ports[0]).not.toBe(ports[1]);
      expect(ports.filter((p) => p !== port).length).toBeGreaterThanOrEqual(1);
      // Each ran exactly once.
      expect(readFileSync(log, "utf8").split("\n").filter(Boolean).sort()).toEqual(["first", "second"]);
    } finally {
      connections.close();
    }
  });

  it("take a kept connection that opens no channel for dead, and run the command on a new one", async () => {
    const connections = createGuestConnections({ openMs: 500 });
    const target = kept(connections);
    // The server's process for the kept connection (the shell's parent), stopped: it answers nothing.
    const { stdout } = await sh(target, 'echo "$PPID ${SSH_CONNECTION#* }"');
    const [serverPid, port] = stdout.split(" ");
    process.kill(Number(serverPid), "SIGSTOP");
    try {
      const t0 = Date.now();
      const again = await portOf(target);
      expect(again).not.toBe(port);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
      // The dead one is no longer kept: the next command makes a new kept connection, the one after shares it.
      const next = await portOf(target);
      expect([port, again]).not.toContain(next);
      expect(await portOf(target)).toBe(next);
    } finally {
      process.kill(Number(serverPid), "SIGKILL");
      connections.close();
    }
  });

  it("close the connection of a cancelled command, after the other commands on it ended", async () => {
    const connections = createGuestConnections();
    // A second guest that allows two commands per connection: the two below share one.
    const second = await startTestGuest({ maxSessions: 2 });
    try {
      const shared = { ...second.target("full"), knownHostsFile: join(second.dir, "known_hosts") };
      const target = { ...shared, reuse: { key: "box/3/3", connections } };
      const port = await portOf(target);
      const stop = new AbortController();
      const long = sh(target, 'sleep 0.5; echo "${SSH_CONNECTION#* }"');
      const cancelled = sh(target, "sleep 30", stop.signal).catch((e: unknown) => e);
      await new Promise((r) => setTimeout(r, 200));
      stop.abort(new Error("cancelled by the test"));
      expect(((await cancelled) as Error).message).toBe("cancelled by the test");
      // The other command on the connection ran to its end there.
      const other = await long;
      expect([other.code, other.stdout.split(" ")[0]]).toEqual([0, port]);
      await until(() => !connectedPorts(shared.port).includes(port), "the cancelled command's connection closed");
      expect(connections.size).toBe(0);
      expect(await portOf(target)).not.toBe(port);
    } finally {
      connections.close();
      second.stop();
    }
  });

  it("close a guest's connections when it stops, also one still being made, and keep the others'", async () => {
    const connections = createGuestConnections();
    try {
      const other = kept(connections, "vm2/7/7");
      const otherPort = await portOf(other);
      const stopping = kept(connections, "vm1/7/7");
      const before = await portOf(stopping);
      connections.warm(kept(connections, "vm1/8/8")); // a later boot's, being made
      expect(connections.size).toBe(3);
      await connections.closeGuest("vm1");
      expect(connections.size).toBe(1);
      await until(() => !connectedPorts().includes(before), "vm1's connection closed");
      expect(await portOf(other)).toBe(otherPort);
    } finally {
      connections.close();
    }
  });

  it("forget a warm-up that failed; one that worked is the first command's connection", async () => {
    const connections = createGuestConnections();
    try {
      const nowhere = { ...kept(connections, "box/4/4"), port: await freePort() };
      connections.warm(nowhere);
      expect(connections.size).toBe(1);
      await until(() => connections.size === 0, "the failed warm-up forgotten");
      const error = await sh(nowhere, "true").catch((e: unknown) => e);
      expect([(error as BangerError).kind, (error as BangerError).reason]).toEqual([
        "unavailable",
        "GUEST_UNREACHABLE",
      ]);

      const before = connectedPorts();
      const target = kept(connections, "box/5/5");
      connections.warm(target);
      await until(() => connectedPorts().length > before.length, "the warm-up connected");
      const warmed = connectedPorts().filter((p) => !before.includes(p));
      expect(warmed).toHaveLength(1);
      expect(await portOf(target)).toBe(warmed[0]);
    } finally {
      connections.close();
    }
  });
});
