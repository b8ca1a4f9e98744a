import { lstatSync, mkdtempSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { spawn } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus } from "@banger/gen/health/v1/health_pb.js";
import { HostService, file_banger_privileged_v1_host } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { InvalidArgumentError } from "./errors.js";
import type { CallTracker } from "./idle-gc.js";
import { createLogger } from "./logging.js";
import { implementService } from "./service-impl.js";
import { createUnixTransport } from "./unix-client.js";
import { startUnixServer, type UnixServer } from "./unix-server.js";

let dir: string;
const lines: Record<string, unknown>[] = [];
const logger = createLogger({
  service: "privileged",
  destination: new Writable({
    write(chunk: Buffer, _e, done) {
      for (const l of chunk.toString().split("\n").filter(Boolean))
        lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  }),
});

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "banger-sock-"));
  lines.length = 0;
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** A HostService whose GetVersion takes `delayMs`, to have a call in flight. */
function start(socketPath: string, delayMs = 0, calls?: CallTracker): Promise<UnixServer> {
  return startUnixServer({
    ...(calls ? { calls } : {}),
    socketPath,
    mode: 0o600,
    logger,
    logPrefix: "helper rpc",
    files: [file_banger_privileged_v1_host],
    routes: (router) =>
      router.service(
        HostService,
        implementService(HostService, {
          async getVersion() {
            await new Promise((r) => setTimeout(r, delayMs));
            return { version: "test" };
          },
        }),
      ),
  });
}

describe("Unix socket server", () => {
  it("refuses a socket path longer than 107 bytes instead of letting Node truncate it", async () => {
    const long = join(dir, "x".repeat(120) + ".sock");
    await expect(start(long)).rejects.toThrow(InvalidArgumentError);
    await expect(start(long)).rejects.toThrow(/at most 107/);
    expect(existsSync(long.slice(0, 107))).toBe(false);
  });

  it("creates the socket with mode 0600 and answers health checks", async () => {
    const socket = join(dir, "s.sock");
    const server = await start(socket);
    expect(lstatSync(socket).mode & 0o777).toBe(0o600);
    const t = createUnixTransport(socket, { peer: "test" });
    const health = createClient(Health, t.transport);
    expect((await health.check({ service: "" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    expect((await health.check({ service: "banger.privileged.v1.HostService" })).status).toBe(
      HealthCheckResponse_ServingStatus.SERVING,
    );
    t.close();
    await server.close();
  });

  it("replaces a stale socket nobody listens on, refuses a live one and a non-socket file", async () => {
    const socket = join(dir, "s.sock");
    // A socket file whose server is gone, as `kill -9` leaves it.
    const crashed = spawn(process.execPath, [
      "-e",
      `require("net").createServer().listen(${JSON.stringify(socket)}, () => console.log("up"))`,
    ]);
    await new Promise((r) => crashed.stdout.once("data", r));
    crashed.kill("SIGKILL");
    await new Promise((r) => crashed.once("exit", r));
    expect(lstatSync(socket).isSocket()).toBe(true);

    const server = await start(socket);
    await expect(start(socket)).rejects.toThrow(/already listening/);
    await server.close();

    const file = join(dir, "plain");
    writeFileSync(file, "not a socket");
    await expect(start(file)).rejects.toThrow(/not a socket; refusing/);
    expect(existsSync(file)).toBe(true);
  });

  it("tells its call tracker (the idle collector) of each call as it starts and once it has ended, failed ones too", async () => {
    const socket = join(dir, "s.sock");
    let inFlight = 0;
    let started = 0;
    const calls: CallTracker = {
      started() {
        inFlight++;
        started++;
        return () => inFlight--;
      },
    };
    const server = await start(socket, 200, calls);
    const t = createUnixTransport(socket, { peer: "helper" });
    const client = createClient(HostService, t.transport);
    const slow = [client.getVersion({}), client.getVersion({})];
    await new Promise((r) => setTimeout(r, 100));
    expect({ started, inFlight }).toEqual({ started: 2, inFlight: 2 });
    await Promise.all(slow);
    // Not implemented by this server: UNIMPLEMENTED.
    await expect(client.getInventory({})).rejects.toThrow(ConnectError);
    await new Promise((r) => setTimeout(r, 20));
    expect({ started, inFlight }).toEqual({ started: 3, inFlight: 0 });
    t.close();
    await server.close();
  });

  it("shuts down gracefully: in-flight calls finish, new ones are refused, the socket is removed", async () => {
    const socket = join(dir, "s.sock");
    const server = await start(socket, 300);
    const t = createUnixTransport(socket, { peer: "helper" });
    const client = createClient(HostService, t.transport);
    const inFlight = client.getVersion({});
    await new Promise((r) => setTimeout(r, 50));
    const closed = server.close();
    await expect(inFlight).resolves.toMatchObject({ version: "test" });
    await closed;
    expect(existsSync(socket)).toBe(false);
    t.close();

    const again = createUnixTransport(socket, { peer: "privileged helper" });
    const error = await createClient(HostService, again.transport)
      .getVersion({})
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConnectError);
    expect((error as ConnectError).code).toBe(Code.Unavailable);
    expect((error as ConnectError).rawMessage).toBe(`privileged helper is unavailable at ${socket}: no socket there`);
    again.close();

    const completed = lines.filter((l) => l["msg"] === "helper rpc completed");
    expect(completed).toHaveLength(1);
    expect(completed[0]).toMatchObject({ rpc: "banger.privileged.v1.HostService/GetVersion", code: "ok" });
  });

  it("logs one failure line and answers UNIMPLEMENTED for an RPC not built yet", async () => {
    const socket = join(dir, "s.sock");
    const server = await start(socket);
    const t = createUnixTransport(socket, { peer: "helper" });
    const error = await createClient(HostService, t.transport)
      .getInventory({})
      .catch((e: unknown) => e as ConnectError);
    expect(error).toBeInstanceOf(ConnectError);
    expect((error as ConnectError).code).toBe(Code.Unimplemented);
    expect((error as ConnectError).rawMessage).toBe(
      "banger.privileged.v1.HostService/GetInventory is not implemented yet",
    );
    t.close();
    await server.close();
    const failed = lines.filter((l) => l["msg"] === "helper rpc failed");
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({
      code: "unimplemented",
      reason: "NOT_IMPLEMENTED",
      op_id: expect.stringMatching(/^op-/) as unknown,
    });
  });
});
