/**
 * Exec over SSH against a real OpenSSH server on 127.0.0.1 standing in for a
 * guest (this machine boots no guests here; test/e2e does with QEMU).
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { BangerError } from "@banger/common";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  LISTENING_PORTS_ARGV,
  execInGuest,
  parseListeningPorts,
  remoteCommand,
  type GuestCommand,
  type GuestInput,
  type GuestTarget,
} from "./guest-exec.js";
import { createGuestConnections } from "./guest-connections.js";
import { freePort, sshdSkip, startTestGuest, type TestGuest } from "../../test-support/sshd.js";

const canRun = !sshdSkip("guest exec over SSH");

let guest: TestGuest | undefined;
let dir: string;
let target: GuestTarget;

beforeAll(async () => {
  if (!canRun) return;
  guest = await startTestGuest();
  dir = guest.dir;
  // A known_hosts in a directory that does not exist yet: pinning makes it.
  target = { ...guest.target("full"), knownHostsFile: join(dir, "banger", "known_hosts") };
});

afterAll(() => guest?.stop());

const command = (argv: string[], extra: Partial<GuestCommand> = {}): GuestCommand => ({
  argv,
  env: [],
  workingDir: "",
  user: "",
  stdin: new Uint8Array(),
  timeoutMs: undefined,
  ...extra,
});

async function run(cmd: GuestCommand, to: GuestTarget = target) {
  let stdout = "";
  let stderr = "";
  const exit = await execInGuest(
    to,
    cmd,
    { onStdout: (c) => (stdout += c.toString()), onStderr: (c) => (stderr += c.toString()) },
    new AbortController().signal,
  );
  return { stdout, stderr, exit };
}

describe("remote command lines", () => {
  it("quote every word, and refuse an empty argv or a bad environment entry", () => {
    expect(remoteCommand(command(["printf", "%s|", "a b", "it's", "$HOME"]))).toBe(
      `cd /root && exec printf '%s|' 'a b' 'it'\\''s' '$HOME'`,
    );
    const reason = (fn: () => unknown) => {
      try {
        fn();
      } catch (error) {
        return (error as BangerError).reason;
      }
      return "none";
    };
    expect(reason(() => remoteCommand(command([])))).toBe("EMPTY_ARGV");
    expect(reason(() => remoteCommand(command(["true"], { env: ["not an entry"] })))).toBe("INVALID_ENV");
  });
});

describe("listening ports from /proc/net", () => {
  it("keeps listening TCP and bound UDP sockets, with their addresses, sorted by port", () => {
    const header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
    const output = [
      "# tcp",
      header,
      "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1",
      "   1: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   100        0 2 1",
      "   2: 0200A8C0:0016 0100A8C0:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1",
      "# tcp6",
      header,
      "   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0 0 0 0 0 4 1",
      "   1: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A 0 0 0 0 0 5 1",
      "# udp",
      header,
      "   0: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 6 2",
      "# udp6",
    ].join("\n");
    expect(parseListeningPorts(output)).toEqual([
      { protocol: "tcp", address: "0.0.0.0", port: 22, process: "" },
      { protocol: "udp", address: "0.0.0.0", port: 53, process: "" },
      { protocol: "tcp6", address: "::", port: 80, process: "" },
      { protocol: "tcp6", address: "::1", port: 631, process: "" },
      { protocol: "tcp", address: "127.0.0.1", port: 5432, process: "" },
    ]);
  });
});

// Every command here runs both on a connection of its own and on kept connections (guest-connections.ts).
describe.skipIf(!canRun).each(["a connection of its own", "kept connections"])(
  "exec in a guest over SSH (a real sshd on 127.0.0.1), %s",
  (mode) => {
    let base: GuestTarget;
    const connections = createGuestConnections();
    beforeAll(() => {
      base = target;
      if (mode === "kept connections") target = { ...target, reuse: { key: "box/1/1", connections } };
    });
    afterAll(() => {
      connections.close();
      target = base;
    });

    it("lists the guest's listening ports (the sshd it talks to among them)", async () => {
      const { stdout, exit } = await run(command(LISTENING_PORTS_ARGV));
      expect(exit.code).toBe(0);
      expect(parseListeningPorts(stdout)).toContainEqual({
        protocol: "tcp",
        address: "127.0.0.1",
        port: target.port,
        process: "",
      });
    });

    it("streams stdout and stderr apart, passes stdin, and ends with the exit code", async () => {
      const result = await run(
        command(["sh", "-c", "echo out; echo err >&2; cat; exit 3"], { stdin: Buffer.from("in\n") }),
      );
      expect(result).toEqual({ stdout: "out\nin\n", stderr: "err\n", exit: { code: 3, signal: "", timedOut: false } });
    });

    it("runs exactly the argv given, with its environment and working directory", async () => {
      const quoted = await run(command(["printf", "%s|", "a b", "it's", "$HOME", "*"]));
      expect(quoted.stdout).toBe("a b|it's|$HOME|*|");
      const where = await run(
        command(["sh", "-c", 'echo "$FOO $(pwd)"'], { env: ["FOO=bar baz"], workingDir: "/tmp" }),
      );
      expect(where.stdout).toBe("bar baz /tmp\n");
    });

    it("kills a command that runs past its timeout", async () => {
      const t0 = Date.now();
      const result = await run(command(["sleep", "30"], { timeoutMs: 300 }));
      expect(result.exit).toEqual({ code: -1, signal: "KILL", timedOut: true });
      expect(Date.now() - t0).toBeLessThan(20_000);
    });

    it("pins the host key on first contact and refuses a different one later", async () => {
      const fresh = { ...target, knownHostsFile: join(dir, `pin of ${mode}`, "known_hosts") };
      expect((await run(command(["true"]), fresh)).exit.code).toBe(0);
      const pinned = readFileSync(fresh.knownHostsFile, "utf8");
      expect(pinned).toMatch(/^box\.vm ssh-ed25519 \S+\n$/);
      expect((await run(command(["true"]), fresh)).exit.code).toBe(0);
      expect(readFileSync(fresh.knownHostsFile, "utf8")).toBe(pinned);

      const other = readFileSync(join(dir, "full.pub"), "utf8").split(" ")[1];
      writeFileSync(fresh.knownHostsFile, `box.vm ssh-ed25519 ${other}\n`);
      // A kept connection's key was checked when it was made: the next connection is.
      connections.close();
      const error = await run(command(["true"]), fresh).catch((e: unknown) => e);
      expect([(error as BangerError).kind, (error as BangerError).reason]).toEqual([
        "failed-precondition",
        "HOST_KEY_MISMATCH",
      ]);
    });

    it("streams input as it comes, interactively, and ends the command's stdin when the input ends", async () => {
      let stdout = "";
      let sawFirst!: () => void;
      const firstEcho = new Promise<void>((resolve) => (sawFirst = resolve));
      async function* input(): AsyncGenerator<GuestInput> {
        yield { kind: "stdin", data: Buffer.from("one\n") };
        await firstEcho; // the guest answered before the next line was sent: it really is interactive
        yield { kind: "stdin", data: Buffer.from("two\n") };
        yield { kind: "close" };
      }
      const exit = await execInGuest(
        target,
        command(["sh", "-c", "while read -r line; do echo got $line; done; echo done"]),
        {
          onStdout: (chunk) => {
            stdout += chunk.toString();
            if (stdout.includes("got one")) sawFirst();
          },
          onStderr: () => undefined,
        },
        new AbortController().signal,
        { input: input() },
      );
      expect([stdout, exit.code]).toEqual(["got one\ngot two\ndone\n", 0]);
    });

    it("gives a pseudo-terminal of the asked size, and resizes it", async () => {
      let stdout = "";
      let sawSize!: () => void;
      const size = new Promise<void>((resolve) => (sawSize = resolve));
      async function* input(): AsyncGenerator<GuestInput> {
        await size;
        yield { kind: "resize", columns: 132, rows: 50 };
        await new Promise((r) => setTimeout(r, 200));
        yield { kind: "stdin", data: Buffer.from("\n") };
      }
      const exit = await execInGuest(
        target,
        command(["sh", "-c", "stty size; read -r _; stty size"]),
        {
          onStdout: (chunk) => {
            stdout += chunk.toString();
            if (stdout.includes("24 100")) sawSize();
          },
          onStderr: () => undefined,
        },
        new AbortController().signal,
        { input: input(), tty: { columns: 100, rows: 24, term: "xterm" } },
      );
      expect(exit.code).toBe(0);
      expect(stdout.replace(/\r/g, "")).toMatch(/^24 100\n(\n)?50 132\n$/);
    });

    it("reports a guest that does not answer as UNAVAILABLE (GUEST_UNREACHABLE)", async () => {
      const error = await run(command(["true"]), { ...target, port: await freePort() }).catch((e: unknown) => e);
      expect([(error as BangerError).kind, (error as BangerError).reason]).toEqual([
        "unavailable",
        "GUEST_UNREACHABLE",
      ]);
    });
  },
);
