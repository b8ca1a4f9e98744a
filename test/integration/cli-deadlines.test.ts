/**
 * The CLI's deadlines against a socket that accepts and never answers (as a socket-activated bangerd that
 * cannot start leaves its callers): a request ends at its deadline, a stream at its idle deadline, each with
 * an error naming the socket and where to look, within the time `--timeout` gives. No services needed.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "./harness.js";

let dir: string;
let socket: string;
let server: Server;
const held: Socket[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "banger-deadline-"));
  socket = join(dir, "orchestrator.sock");
  server = createServer((connection) => {
    held.push(connection); // accepted, never read from nor answered
    connection.on("error", () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
});

afterAll(async () => {
  for (const connection of held) connection.destroy();
  await new Promise((resolve) => server.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

const WHERE =
  "is bangerd running? check 'banger daemon status'; installed: systemctl status bangerd.socket bangerd.service, " +
  "journalctl -u bangerd";

describe("deadlines against a socket that never answers", () => {
  it("a request ends after --timeout with DEADLINE_EXCEEDED's message naming the socket (exit 1)", async () => {
    const t0 = Date.now();
    const result = await runCli(["--timeout", "1s", "vm", "list"], { BANGER_SOCKET: socket });
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      `banger: no answer from bangerd at ${socket} within 1 s (VmService/ListVms); ${WHERE} ` +
        `(--timeout sets this deadline) (${/\((op-[0-9a-f]{12})\)\n$/.exec(result.stderr)?.[1]})\n`,
    );
  }, 30_000);

  it("--timeout after a command that has none of its own is the global one; --socket is taken there too", async () => {
    const result = await runCli(["op", "list", "--timeout=500ms", "--socket", socket]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(
      new RegExp(`^banger: no answer from bangerd at ${socket} within 0\\.5 s \\(OperationService/ListOperations\\)`),
    );
  }, 30_000);

  it("vm stop's own --timeout stays its own (the graceful shutdown's), not the call's deadline", async () => {
    const result = await runCli(["--timeout", "1s", "--socket", socket, "vm", "stop", "box", "--timeout", "5"]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/within 1 s \(VmService\/StopVm\)/);
  }, 30_000);

  it("a stream (op watch) ends at its idle deadline: a keepalive went unanswered (exit 1)", async () => {
    const t0 = Date.now();
    const result = await runCli(["--timeout", "1s", "op", "watch", "op-0123456789ab"], { BANGER_SOCKET: socket });
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(
      new RegExp(
        `^banger: bangerd at ${socket} stopped answering \\(a keepalive went unanswered; idle deadline 1 s\\); ` +
          `is bangerd running\\?.*\\(op-[0-9a-f]{12}\\)\\n$`,
      ),
    );
  }, 30_000);

  it("a --timeout that is not a duration is a usage error (exit 2)", async () => {
    const result = await runCli(["--timeout", "soon", "vm", "list"], { BANGER_SOCKET: socket });
    expect([result.code, result.stderr]).toEqual([
      2,
      "banger: --timeout soon: expected a duration such as 30s, 500ms or 2m\nRun 'banger --help' for usage.\n",
    ]);
  });
});
