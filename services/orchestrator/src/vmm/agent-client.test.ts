import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { MAX_ANSWER_BYTES, createAgentClient, hybridVsockConnector, unixAgentConnector } from "./agent-client.js";

const QEMU_GA = "/usr/sbin/qemu-ga";
const haveQemuGa = requireTools("the agent client against a real qemu-ga", [QEMU_GA]).length === 0;

let dir: string;
const cleanups: (() => void)[] = [];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "banger-agent-"));
});
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
  rmSync(dir, { recursive: true, force: true });
});

async function waitFor(path: string): Promise<void> {
  for (let i = 0; i < 200 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 25));
}

/** A fake agent: answers the sync (0xFF first), guest-ping and guest-info; `extra` answers the rest. */
function fakeAgent(extra: (command: { execute: string }) => object | undefined = () => undefined) {
  return (connection: Socket) => {
    connection.on("error", () => {});
    let buffered = "";
    connection.on("data", (chunk) => {
      buffered += chunk.toString("latin1").replace(/\xff/g, "");
      let newline;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const command = JSON.parse(buffered.slice(0, newline)) as { execute: string; arguments?: { id?: number } };
        buffered = buffered.slice(newline + 1);
        if (command.execute === "guest-sync-delimited") {
          connection.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(`{"return": ${command.arguments?.id}}\n`)]));
        } else if (command.execute === "guest-ping") connection.write('{"return": {}}\n');
        else if (command.execute === "guest-info") connection.write('{"return": {"version": "9.9.9"}}\n');
        else {
          const answer = extra(command);
          if (answer) connection.write(`${JSON.stringify(answer)}\n`);
        }
      }
    });
  };
}

describe("the guest agent client", () => {
  // qemu-ga on the host, on a unix socket: only ping and info (never shutdown, exec or freeze: they act on this machine).
  it.skipIf(!haveQemuGa)("pings a real qemu-ga and reads its version, one session after another", async () => {
    const socket = join(dir, "qga.sock");
    const agent: ChildProcess = spawn(QEMU_GA, ["-m", "unix-listen", "-p", socket, "-f", join(dir, "pid"), "-t", dir], {
      stdio: "ignore",
    });
    cleanups.push(() => agent.kill("SIGKILL"));
    await waitFor(socket);
    const client = createAgentClient(unixAgentConnector(socket));
    const version = spawnSync(QEMU_GA, ["-V"], { encoding: "utf8" }).stdout.split(" ")[3]?.trim() ?? "";
    expect(await client.ping(5_000)).toEqual({ version });
    expect(await client.ping(5_000)).toEqual({ version });
  });

  it("speaks Firecracker's hybrid vsock handshake: CONNECT <port>, OK <n>, then QGA", async () => {
    const uds = join(dir, "vsock.sock");
    const ports: string[] = [];
    const server: Server = createServer((connection) => {
      connection.once("data", (first) => {
        const line = first.toString("latin1");
        ports.push(line);
        if (line !== "CONNECT 1024\n") return connection.destroy();
        connection.write("OK 1073741824\n");
        fakeAgent((command) =>
          command.execute === "guest-shutdown"
            ? { error: { class: "GenericError", desc: "child process has failed to shutdown" } }
            : undefined,
        )(connection);
      });
    });
    await new Promise<void>((resolve) => server.listen(uds, resolve));
    cleanups.push(() => server.close());
    expect(await createAgentClient(hybridVsockConnector(uds, 1024)).ping(5_000)).toEqual({ version: "9.9.9" });
    // An error answer to guest-shutdown is the agent saying it could not.
    await expect(createAgentClient(hybridVsockConnector(uds, 1024)).shutdown(1_000)).rejects.toMatchObject({
      reason: "AGENT_ERROR",
      message: expect.stringContaining("failed to shutdown") as unknown,
    });
    // A port nobody listens on: Firecracker closes the connection.
    await expect(createAgentClient(hybridVsockConnector(uds, 52)).ping(2_000)).rejects.toMatchObject({
      reason: "AGENT_UNREACHABLE",
    });
    expect(ports).toEqual(["CONNECT 1024\n", "CONNECT 1024\n", "CONNECT 52\n"]);
  });

  it("holds at most MAX_ANSWER_BYTES of one answer from a guest that never ends its line", async () => {
    const socket = join(dir, "flood.sock");
    const server = createServer(
      fakeAgent((command) => {
        if (command.execute !== "guest-exec") return undefined;
        return { return: { pid: 1, padding: "x".repeat(MAX_ANSWER_BYTES + 1) } };
      }),
    );
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    cleanups.push(() => server.close());
    await expect(createAgentClient(unixAgentConnector(socket)).exec("/bin/true", [], 5_000)).rejects.toMatchObject({
      reason: "AGENT_ANSWER_TOO_LARGE",
    });
  });

  it("takes no answer to guest-shutdown as accepted; an agent that never answers the sync times out", async () => {
    const socket = join(dir, "agent.sock");
    const server = createServer(fakeAgent(() => undefined));
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    cleanups.push(() => server.close());
    await createAgentClient(unixAgentConnector(socket)).shutdown(300);
    const silent = createServer((connection) => connection.on("error", () => {}));
    const silentSocket = join(dir, "silent.sock");
    await new Promise<void>((resolve) => silent.listen(silentSocket, resolve));
    cleanups.push(() => silent.close());
    await expect(createAgentClient(unixAgentConnector(silentSocket)).ping(300)).rejects.toMatchObject({
      reason: "AGENT_TIMEOUT",
    });
    await expect(createAgentClient(unixAgentConnector(join(dir, "none.sock"))).ping(300)).rejects.toMatchObject({
      reason: "AGENT_UNREACHABLE",
    });
  });
});
