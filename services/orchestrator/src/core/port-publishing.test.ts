import { createSocket, type Socket as UdpSocket } from "node:dgram";
import { once } from "node:events";
import { connect, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { Writable } from "node:stream";
import { createLogger } from "@banger/common";
import { afterEach, describe, expect, it } from "vitest";
import type { PublishedPort } from "../store/index.js";
import {
  MAX_CONNECTIONS_PER_PORT,
  MAX_UDP_CLIENTS_PER_PORT,
  checkNoClash,
  createPortRelays,
  validPublishedPort,
  type PortRequest,
} from "./port-publishing.js";

const logger = createLogger({ service: "orchestrator", destination: new Writable({ write: (_c, _e, d) => d() }) });
const LOCAL = () => new Set(["127.0.0.1", "192.0.2.10"]);

/** A free port on 127.0.0.1 (bound and let go). */
async function freePort(): Promise<number> {
  const server = createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A TCP "guest" on 127.0.0.1 answering `<what it read>!` once its client shut its side. */
async function tcpGuest(): Promise<{ port: number; server: Server }> {
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    let got = "";
    socket.on("data", (chunk: Buffer) => (got += chunk.toString()));
    socket.on("end", () => socket.end(`${got}!`));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  cleanups.push(() => new Promise((resolve) => server.close(resolve)));
  return { port: (server.address() as AddressInfo).port, server };
}

/** Sends `text`, shuts the writing side and reads the answer to its end. */
async function ask(port: number, text: string): Promise<string> {
  const socket = connect({ host: "127.0.0.1", port, allowHalfOpen: true });
  let answer = "";
  socket.on("data", (chunk: Buffer) => (answer += chunk.toString()));
  await once(socket, "connect");
  socket.end(text);
  await once(socket, "close");
  return answer;
}

/** The kind and reason of a domain error (the gRPC edge maps the kind to the code). */
const refusal = (error: unknown) => ({
  kind: (error as { kind: string }).kind,
  reason: (error as { reason: string }).reason,
});

describe("a published port's checks", () => {
  const check = (req: Partial<PortRequest>, allowPrivileged = false) =>
    validPublishedPort(
      { hostIp: "", hostPort: 8080, guestPort: 80, protocol: "", ...req },
      { allowPrivileged, hostAddresses: LOCAL },
    );

  it("fills in every address and tcp, and takes this host's addresses", () => {
    expect(check({})).toEqual({ hostIp: "0.0.0.0", hostPort: 8080, guestPort: 80, protocol: "tcp" });
    expect(check({ hostIp: "192.0.2.10", protocol: "udp" })).toMatchObject({ hostIp: "192.0.2.10", protocol: "udp" });
    expect(check({ hostIp: "127.0.0.1" }).hostIp).toBe("127.0.0.1");
  });

  it.each([
    [{ hostPort: 0 }, "INVALID_PORT"],
    [{ hostPort: 65536 }, "INVALID_PORT"],
    [{ guestPort: 0 }, "INVALID_PORT"],
    [{ guestPort: 1.5 }, "INVALID_PORT"],
    [{ protocol: "sctp" }, "INVALID_PORT"],
    [{ hostIp: "203.0.113.7" }, "HOST_IP_NOT_LOCAL"],
    [{ hostIp: "localhost" }, "HOST_IP_NOT_LOCAL"],
    [{ hostPort: 80 }, "PRIVILEGED_PORT"],
  ])("refuses %o as an invalid argument, %s", (req, reason) => {
    let thrown: unknown;
    try {
      check(req);
    } catch (error) {
      thrown = error;
    }
    expect(refusal(thrown)).toEqual({ kind: "invalid-argument", reason });
  });

  it("takes a port below 1024 when the config allows it", () => {
    expect(check({ hostPort: 80 }, true).hostPort).toBe(80);
  });

  it("refuses a host port another VM publishes on the same or every address, as already existing", () => {
    const web = check({});
    const other = [{ name: "other", publishedPorts: [check({ hostIp: "127.0.0.1" })] }];
    expect(() => checkNoClash([web], other)).toThrow(/already published by VM other \(127\.0\.0\.1:8080→80\/tcp\)/);
    try {
      checkNoClash([web], other);
    } catch (error) {
      expect(refusal(error)).toEqual({ kind: "already-exists", reason: "PORT_PUBLISHED" });
    }
    // Another protocol, or another single address, does not clash.
    expect(() => checkNoClash([check({ protocol: "udp" })], other)).not.toThrow();
    const onOther = [{ name: "other", publishedPorts: [check({ hostIp: "192.0.2.10" })] }];
    expect(() => checkNoClash([check({ hostIp: "127.0.0.1" })], onOther)).not.toThrow();
    expect(() => checkNoClash([web, check({ guestPort: 81 })], [])).toThrow(/asked for twice/);
  });
});

describe("the relays of published ports", () => {
  const relays = createPortRelays(logger);
  const published = (hostPort: number, guestPort: number, protocol: "tcp" | "udp" = "tcp"): PublishedPort => ({
    hostIp: "127.0.0.1",
    hostPort,
    guestPort,
    protocol,
  });
  afterEach(async () => {
    await relays.close("vm-a");
    await relays.close("vm-b");
  });

  it("relays a TCP connection both ways, half-close included, until the port is closed", async () => {
    const guest = await tcpGuest();
    const port = published(await freePort(), guest.port);
    await relays.open("vm-a", "127.0.0.1", port);
    await relays.open("vm-a", "127.0.0.1", port); // idempotent
    expect(relays.listening("vm-a")).toEqual([port]);
    expect(await ask(port.hostPort, "hello")).toBe("hello!");
    await relays.close("vm-a", port);
    expect(relays.listening("vm-a")).toEqual([]);
    await expect(ask(port.hostPort, "again")).rejects.toMatchObject({ code: "ECONNREFUSED" });
  });

  it("refuses a port something on the host holds as already existing (HOST_PORT_IN_USE), and listens on nothing", async () => {
    const holder = await tcpGuest();
    const port = published(holder.port, 80);
    const failure = await relays.open("vm-a", "127.0.0.1", port).catch((error: unknown) => error);
    expect(refusal(failure)).toEqual({ kind: "already-exists", reason: "HOST_PORT_IN_USE" });
    expect(String(failure)).toContain(`127.0.0.1:${holder.port}/tcp is already in use on the host`);
    expect(relays.listening("vm-a")).toEqual([]);
    expect(refusal(await relays.probe(port).catch((error: unknown) => error))).toMatchObject({
      reason: "HOST_PORT_IN_USE",
    });
  });

  it("closes the connections it relays when the VM's ports close", async () => {
    const guest = await tcpGuest();
    const port = published(await freePort(), guest.port);
    await relays.open("vm-b", "127.0.0.1", port);
    const client = connect({ host: "127.0.0.1", port: port.hostPort });
    await once(client, "connect");
    const closed = once(client, "close");
    await relays.close("vm-b");
    await closed;
  });

  it(`relays at most ${MAX_CONNECTIONS_PER_PORT} TCP connections at once per port`, async () => {
    const guest = await tcpGuest();
    const port = published(await freePort(), guest.port);
    await relays.open("vm-a", "127.0.0.1", port);
    const clients: Socket[] = [];
    cleanups.push(() => clients.forEach((c) => c.destroy()));
    for (let i = 0; i < MAX_CONNECTIONS_PER_PORT; i++) {
      const client = connect({ host: "127.0.0.1", port: port.hostPort });
      clients.push(client);
      await once(client, "connect");
    }
    // Once the relay took them all (each reached the guest), one more is dropped at once.
    while ((await connectionCount(guest.server)) < MAX_CONNECTIONS_PER_PORT) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const extra = connect({ host: "127.0.0.1", port: port.hostPort });
    cleanups.push(() => extra.destroy());
    await once(extra, "close");
    // One that was relayed still works after a slot frees.
    clients.pop()?.destroy();
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await ask(port.hostPort, "room")).toBe("room!");
  }, 30_000);

  it("relays UDP datagrams both ways, for a bounded number of clients", async () => {
    const guest = createSocket("udp4");
    guest.on("message", (data, from) => guest.send(Buffer.concat([data, Buffer.from("!")]), from.port, from.address));
    guest.bind(0, "127.0.0.1");
    await once(guest, "listening");
    cleanups.push(() => guest.close());
    const port = published(await freePort(), guest.address().port, "udp");
    await relays.open("vm-a", "127.0.0.1", port);
    const clients: UdpSocket[] = [];
    cleanups.push(() => clients.forEach((c) => c.close()));
    const askUdp = async (text: string): Promise<string | undefined> => {
      const client = createSocket("udp4");
      clients.push(client);
      const answer = once(client, "message").then(([data]) => (data as Buffer).toString());
      client.send(text, port.hostPort, "127.0.0.1");
      return answer;
    };
    /** Whether a datagram sent now gets an answer within 2 s (the relay answers in milliseconds). */
    const dropped = async (text: string): Promise<boolean> => {
      const answer = askUdp(text).then(() => false);
      return Promise.race([answer, new Promise<boolean>((resolve) => setTimeout(() => resolve(true), 2_000))]);
    };
    expect(await askUdp("ping")).toBe("ping!");
    for (let i = 1; i < MAX_UDP_CLIENTS_PER_PORT; i++) expect(await askUdp(`c${i}`)).toBe(`c${i}!`);
    // The next client is one too many: its datagram is dropped.
    expect(await dropped("one too many")).toBe(true);
    await relays.close("vm-a");
    expect(relays.listening("vm-a")).toEqual([]);
  }, 60_000);
});

/** How many connections `server` holds now. */
function connectionCount(server: Server): Promise<number> {
  return new Promise((resolve, reject) =>
    server.getConnections((error, count) => (error ? reject(error) : resolve(count))),
  );
}
