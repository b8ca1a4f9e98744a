import { execFile } from "node:child_process";
import { createSocket } from "node:dgram";
import { Resolver } from "node:dns/promises";
import { connect, type Socket } from "node:net";
import { Writable } from "node:stream";
import { promisify } from "node:util";
import { createLogger } from "@banger/common";
import * as dnsPacket from "dns-packet";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createDnsResponder, type DnsResponder, type DnsResponderOptions } from "./index.js";

const HOST = "127.0.0.1";

interface Harness {
  readonly port: number;
  readonly vms: Map<string, string>;
  readonly logs: Array<Record<string, unknown>>;
}

let responder: DnsResponder | undefined;

async function start(overrides: Partial<DnsResponderOptions> = {}): Promise<Harness> {
  const vms = new Map<string, string>([["box", "172.30.0.2"]]);
  const logs: Array<Record<string, unknown>> = [];
  const logger = createLogger({
    service: "orchestrator",
    level: "debug",
    destination: new Writable({
      write: (chunk: Buffer, _encoding, done) => {
        for (const line of chunk.toString().split("\n").filter(Boolean)) {
          logs.push(JSON.parse(line) as Record<string, unknown>);
        }
        done();
      },
    }),
  });
  responder = createDnsResponder({ lookup: (name) => vms.get(name), logger, ...overrides });
  const { port } = await responder.listen(HOST, 0);
  return { port, vms, logs };
}

afterEach(async () => {
  await responder?.close();
  responder = undefined;
});

function query(name: string, type: dnsPacket.RecordType, extra: Partial<dnsPacket.Packet> = {}, id = 4242): Buffer {
  return dnsPacket.encode({
    type: "query",
    id,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ name, type, class: "IN" }],
    ...extra,
  });
}

/** One datagram out; the answer, or undefined when none came within `waitMs`. */
async function udp(port: number, message: Buffer, waitMs = 1000): Promise<Buffer | undefined> {
  const socket = createSocket("udp4");
  try {
    return await new Promise<Buffer | undefined>((resolve, reject) => {
      const timer = setTimeout(() => resolve(undefined), waitMs);
      socket.on("message", (reply) => {
        clearTimeout(timer);
        resolve(reply);
      });
      socket.on("error", reject);
      socket.send(message, port, HOST);
    });
  } finally {
    socket.close();
  }
}

const frame = (message: Buffer): Buffer => {
  const prefix = Buffer.alloc(2);
  prefix.writeUInt16BE(message.length);
  return Buffer.concat([prefix, message]);
};

/** A TCP connection that collects length-prefixed answers and notes when the server closes it. */
interface TcpClient {
  readonly socket: Socket;
  readonly closed: Promise<void>;
  /** The next `count` answers (waits for them, or fails if the connection closes first). */
  next(count?: number): Promise<Buffer[]>;
}

async function tcp(port: number): Promise<TcpClient> {
  const socket = connect({ host: HOST, port });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  let pending: Buffer = Buffer.alloc(0);
  const answers: Buffer[] = [];
  let wake: (() => void) | undefined;
  const closed = new Promise<void>((resolve) =>
    socket.on("close", () => {
      resolve();
      wake?.();
    }),
  );
  socket.on("error", () => undefined);
  socket.on("data", (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
      answers.push(pending.subarray(2, 2 + pending.readUInt16BE(0)));
      pending = pending.subarray(2 + pending.readUInt16BE(0));
    }
    wake?.();
  });
  return {
    socket,
    closed,
    async next(count = 1) {
      while (answers.length < count) {
        if (socket.destroyed) throw new Error(`connection closed after ${answers.length} of ${count} answers`);
        await new Promise<void>((resolve) => (wake = resolve));
      }
      return answers.splice(0, count);
    },
  };
}

/** @types/dns-packet leaves out the rcode and opcode that dns-packet decodes. */
type Decoded = dnsPacket.DecodedPacket & { rcode?: string; opcode?: string };

const decode = (reply: Buffer | undefined): Decoded => {
  expect(reply, "expected an answer").toBeDefined();
  if (reply === undefined) throw new Error("no answer");
  return dnsPacket.decode(reply);
};

const soaOf = (packet: dnsPacket.DecodedPacket) => (packet.authorities ?? []).find((record) => record.type === "SOA");

describe("dns responder through node's resolver", () => {
  let harness: Harness;
  let resolver: Resolver;
  beforeEach(async () => {
    harness = await start();
    resolver = new Resolver({ timeout: 2000, tries: 1 });
    resolver.setServers([`${HOST}:${harness.port}`]);
  });

  it("reports the port it bound and answers A for a VM", async () => {
    expect(harness.port).toBeGreaterThan(0);
    await expect(resolver.resolve4("box.vm", { ttl: true })).resolves.toEqual([{ address: "172.30.0.2", ttl: 5 }]);
  });

  it("has no AAAA for a VM (NODATA)", async () => {
    await expect(resolver.resolve6("box.vm")).rejects.toMatchObject({ code: "ENODATA" });
  });

  it("says NXDOMAIN for a name that is no VM", async () => {
    await expect(resolver.resolve4("ghost.vm")).rejects.toMatchObject({ code: "ENOTFOUND" });
  });

  it("refuses names outside the zone", async () => {
    await expect(resolver.resolve4("example.com")).rejects.toMatchObject({ code: "EREFUSED" });
  });
});

describe("dns responder with raw packets", () => {
  let harness: Harness;
  beforeEach(async () => {
    harness = await start();
  });

  it("answers A authoritatively, echoing id and question, copying RD, RA clear", async () => {
    const answer = decode(await udp(harness.port, query("box.vm", "A", {}, 777)));
    expect(answer).toMatchObject({ id: 777, rcode: "NOERROR", flag_qr: true, flag_aa: true, flag_rd: true });
    expect(answer.flag_ra).toBe(false);
    expect(answer.questions).toEqual([{ name: "box.vm", type: "A", class: "IN" }]);
    expect(answer.answers).toEqual([
      expect.objectContaining({ name: "box.vm", type: "A", ttl: 5, data: "172.30.0.2" }),
    ]);
    expect(answer.authorities).toEqual([]);

    const noRd = decode(await udp(harness.port, query("box.vm", "A", { flags: 0 })));
    expect(noRd.flag_rd).toBe(false);
  });

  it("is case-insensitive and keeps the asker's case in question and answer", async () => {
    const reply = await udp(harness.port, query("BoX.Vm", "A"));
    const answer = decode(reply);
    expect(answer.rcode).toBe("NOERROR");
    expect(answer.questions).toEqual([{ name: "BoX.Vm", type: "A", class: "IN" }]);
    expect(answer.answers).toEqual([expect.objectContaining({ name: "BoX.Vm", data: "172.30.0.2" })]);
  });

  it("answers NODATA with the zone's SOA for another type of a VM, over UDP and TCP", async () => {
    const overUdp = decode(await udp(harness.port, query("box.vm", "AAAA")));
    const client = await tcp(harness.port);
    client.socket.write(frame(query("box.vm", "MX")));
    const [mx] = await client.next();
    client.socket.destroy();
    for (const answer of [overUdp, decode(mx)]) {
      expect(answer).toMatchObject({ rcode: "NOERROR", flag_aa: true, answers: [] });
      expect(soaOf(answer)).toMatchObject({
        name: "vm",
        ttl: 5,
        data: expect.objectContaining({ mname: "vm", minimum: 5 }) as unknown,
      });
    }
  });

  it("answers NXDOMAIN with the SOA for unknown and deeper names", async () => {
    for (const name of ["ghost.vm", "a.box.vm", "-bad.vm"]) {
      const answer = decode(await udp(harness.port, query(name, "A")));
      expect(answer, name).toMatchObject({ rcode: "NXDOMAIN", flag_aa: true, answers: [] });
      expect(soaOf(answer), name).toBeDefined();
    }
  });

  it("answers the SOA for the apex and NODATA for its other types", async () => {
    const soa = decode(await udp(harness.port, query("vm", "SOA")));
    expect(soa).toMatchObject({ rcode: "NOERROR", flag_aa: true });
    expect(soa.answers).toEqual([expect.objectContaining({ type: "SOA", name: "vm" })]);
    for (const type of ["NS", "A"] as const) {
      const answer = decode(await udp(harness.port, query("VM", type)));
      expect(answer, type).toMatchObject({ rcode: "NOERROR", flag_aa: true, answers: [] });
      expect(soaOf(answer), type).toBeDefined();
    }
  });

  it("refuses other zones, other classes and a label that only looks like box.vm", async () => {
    const outside = decode(await udp(harness.port, query("box.vm.example.com", "A")));
    expect(outside).toMatchObject({ rcode: "REFUSED", flag_aa: false, answers: [], authorities: [] });

    const chaos = dnsPacket.encode({ type: "query", id: 1, questions: [{ name: "box.vm", type: "A", class: "CH" }] });
    expect(decode(await udp(harness.port, chaos)).rcode).toBe("REFUSED");

    // One label "box.vm" (a dot inside the label): not in the zone; its question comes back byte for byte.
    const header = Buffer.from([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    const question = Buffer.concat([Buffer.from([6]), Buffer.from("box.vm"), Buffer.from([0, 0, 1, 0, 1])]);
    const reply = await udp(harness.port, Buffer.concat([header, question]));
    expect(decode(reply).rcode).toBe("REFUSED");
    expect(reply?.subarray(12, 12 + question.length)).toEqual(question);
  });

  it("answers FORMERR to zero or two questions", async () => {
    const none = dnsPacket.encode({ type: "query", id: 9, questions: [] });
    const two = dnsPacket.encode({
      type: "query",
      id: 10,
      questions: [
        { name: "box.vm", type: "A" },
        { name: "box.vm", type: "AAAA" },
      ],
    });
    expect(decode(await udp(harness.port, none))).toMatchObject({ id: 9, rcode: "FORMERR" });
    expect(decode(await udp(harness.port, two))).toMatchObject({ id: 10, rcode: "FORMERR", answers: [] });
  });

  it("answers NOTIMP to an opcode other than QUERY", async () => {
    const update = query("box.vm", "SOA", { flags: 5 << 11 }, 11);
    expect(decode(await udp(harness.port, update))).toMatchObject({
      id: 11,
      opcode: "UPDATE",
      rcode: "NOTIMP",
      answers: [],
    });
  });

  it("ignores an EDNS OPT record and sends none back", async () => {
    const withOpt = query("box.vm", "A", {
      additionals: [
        {
          type: "OPT",
          name: ".",
          udpPayloadSize: 4096,
          extendedRcode: 0,
          ednsVersion: 0,
          flags: 0,
          flag_do: false,
          options: [],
        },
      ],
    });
    const answer = decode(await udp(harness.port, withOpt));
    expect(answer.rcode).toBe("NOERROR");
    expect(answer.answers).toHaveLength(1);
    expect(answer.additionals).toEqual([]);
  });

  it("drops malformed UDP packets without crashing and answers the next query", async () => {
    const valid = query("box.vm", "A");
    const malformed = [
      Buffer.from([1, 2, 3]),
      valid.subarray(0, valid.length - 3),
      Buffer.concat([valid.subarray(0, 12), Buffer.from([0xc0, 0x0c, 0, 1, 0, 1])]),
      dnsPacket.encode({ type: "response", id: 3, questions: [{ name: "box.vm", type: "A" }] }),
      Buffer.alloc(600, 0xff),
    ];
    for (const packet of malformed) expect(await udp(harness.port, packet, 200)).toBeUndefined();
    expect(decode(await udp(harness.port, valid)).answers).toHaveLength(1);
    expect(harness.logs.some((line) => line["msg"] === "dns: malformed packet dropped")).toBe(true);
  });

  it("closes a TCP connection that sends a malformed message; a new one is served", async () => {
    const bad = await tcp(harness.port);
    bad.socket.write(frame(Buffer.from([0xde, 0xad, 0xbe, 0xef])));
    await bad.closed;

    const good = await tcp(harness.port);
    good.socket.write(frame(query("box.vm", "A")));
    const [reply] = await good.next();
    expect(decode(reply).answers).toHaveLength(1);
    good.socket.destroy();
  });

  it("serves pipelined and fragmented TCP queries in order", async () => {
    const client = await tcp(harness.port);
    const both = Buffer.concat([frame(query("box.vm", "A", {}, 1)), frame(query("ghost.vm", "A", {}, 2))]);
    for (const byte of both) client.socket.write(Buffer.from([byte]));
    const [first, second] = await client.next(2);
    expect(decode(first)).toMatchObject({ id: 1, rcode: "NOERROR" });
    expect(decode(second)).toMatchObject({ id: 2, rcode: "NXDOMAIN" });
    client.socket.destroy();
  });

  it("sees VMs created and deleted between queries at once", async () => {
    expect(decode(await udp(harness.port, query("fresh.vm", "A"))).rcode).toBe("NXDOMAIN");
    harness.vms.set("fresh", "172.30.0.9");
    const created = decode(await udp(harness.port, query("fresh.vm", "A")));
    expect(created.answers).toEqual([expect.objectContaining({ data: "172.30.0.9" })]);
    harness.vms.delete("fresh");
    expect(decode(await udp(harness.port, query("fresh.vm", "A"))).rcode).toBe("NXDOMAIN");
  });

  it("answers SERVFAIL and logs the query name when the lookup throws", async () => {
    await responder?.close();
    harness = await start({
      lookup: () => {
        throw new Error("store is gone");
      },
    });
    const answer = decode(await udp(harness.port, query("box.vm", "A")));
    expect(answer.rcode).toBe("SERVFAIL");
    expect(harness.logs).toContainEqual(
      expect.objectContaining({ level: "error", qname: "box.vm.", msg: "dns: answering failed" }),
    );
    expect(decode(await udp(harness.port, query("other.vm", "A"))).rcode).toBe("SERVFAIL");
  });

  it("answers dig (when dig is installed)", async (context) => {
    const run = promisify(execFile);
    const found = await run("dig", ["-v"]).then(
      () => true,
      () => false,
    );
    if (!found) {
      await context.annotate("dig is not installed (apt-get install -y dnsutils): dig assertion skipped");
      console.warn("dig is not installed: skipping the dig assertion");
      return;
    }
    const { stdout } = await run("dig", [`@${HOST}`, "-p", String(harness.port), "box.vm", "+short", "+tries=1"]);
    expect(stdout.trim()).toBe("172.30.0.2");
    const tcpRun = await run("dig", [`@${HOST}`, "-p", String(harness.port), "box.vm", "+short", "+tcp", "+tries=1"]);
    expect(tcpRun.stdout.trim()).toBe("172.30.0.2");
  });
});

describe("dns responder TCP limits", () => {
  it("closes idle connections", async () => {
    const { port } = await start({ tcpIdleMs: 150 });
    const client = await tcp(port);
    const started = Date.now();
    await client.closed;
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it("closes a connection at its maximum lifetime even while it keeps talking", async () => {
    const { port } = await start({ tcpIdleMs: 10_000, tcpMaxLifetimeMs: 300 });
    const client = await tcp(port);
    const chatter = setInterval(() => client.socket.write(frame(query("box.vm", "A"))), 50);
    await client.closed;
    clearInterval(chatter);
  });

  it("refuses connections above the cap", async () => {
    const { port } = await start({ tcpMaxConnections: 2 });
    const held = [await tcp(port), await tcp(port)];
    const third = await tcp(port);
    await third.closed;
    held[0]?.socket.write(frame(query("box.vm", "A")));
    expect(await held[0]?.next()).toHaveLength(1);
    for (const client of held) client.socket.destroy();
  });
});
