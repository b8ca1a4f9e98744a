/**
 * The built-in DNS responder: authoritative for the `vm` zone and nothing
 * else. systemd-resolved routes `~vm` to it on the bridge address; guests use
 * it as their DNS server. It is not a recursive resolver.
 *
 * What it answers (RFC 1035, RFC 2308 for the negative answers):
 * - `<name>.vm` A (or ANY), a VM with an address → one A record, AA, TTL `ttlSeconds`.
 * - `<name>.vm` of another type (AAAA, MX, TXT…) → NOERROR, no answer, SOA in
 *   the authority section (NODATA).
 * - `<name>.vm` that is no VM, or `a.b.vm` → NXDOMAIN with the SOA.
 * - `vm.` SOA → the SOA record; `vm.` of any other type (NS included) → NODATA
 *   with the SOA. Nothing delegates to this server (resolved routes by domain),
 *   so no resolver needs an apex NS, and an NS name would need an address of
 *   its own in a zone whose names belong to VMs. The SOA is what resolvers ask
 *   the apex for (zone-cut and DNSSEC "is this zone signed" probes).
 * - any name outside `vm`, or a class other than IN/ANY → REFUSED.
 * - more or fewer than one question → FORMERR; an opcode other than QUERY → NOTIMP.
 * - a packet that does not parse (or is itself a response) → no answer on
 *   UDP, the connection closed on TCP.
 *
 * The SOA's TTL and MINIMUM are `ttlSeconds` too, so a resolver caches "no
 * such VM" only as long as it caches an address: a VM created or deleted is
 * seen within seconds by cached resolvers, and at once by this server.
 *
 * EDNS: not implemented. An OPT record in the query is ignored and none is
 * sent back, which RFC 6891 §7 prescribes for a server without EDNS; clients
 * then keep to 512-byte answers, and every answer here is far smaller.
 *
 * The question is echoed byte for byte, not re-encoded: resolvers compare it
 * with what they sent (0x20 case randomisation included), and dns-packet
 * cannot round-trip every question (unknown classes, labels holding a dot).
 * dns-packet never compresses names, so the raw question can be spliced in
 * after the header without moving a pointer.
 */
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from "node:dgram";
import { createServer, isIPv6, type Server, type Socket } from "node:net";
import type { Logger } from "@banger/common";
import * as dnsPacket from "dns-packet";

/** The zone this server is authoritative for. */
export const DNS_ZONE = "vm";

/** A VM name as it appears as the first label of `<name>.vm`. */
const VM_LABEL = /^[a-z0-9][a-z0-9-]{0,62}$/;

const DEFAULT_TTL_SECONDS = 5;
const DEFAULT_TCP_MAX_CONNECTIONS = 64;
const DEFAULT_TCP_IDLE_MS = 10_000;
const DEFAULT_TCP_MAX_LIFETIME_MS = 60_000;
/** Responses a TCP client has not read yet before it is cut off (it pipelines without reading). */
const TCP_MAX_UNREAD_BYTES = 64 * 1024;
const UDP_MAX_ANSWER = 512;

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
type Rcode = (typeof RCODE)[keyof typeof RCODE];
const OPCODE_QUERY = 0;
const TYPE = { A: 1, NS: 2, SOA: 6, ANY: 255 } as const;
const CLASS = { IN: 1, ANY: 255 } as const;
const TC_BIT = 1 << 9;

export interface DnsResponderOptions {
  /** The IPv4 address of the VM called `name` (lower case, without `.vm`), if it has one. */
  readonly lookup: (name: string) => string | undefined;
  readonly logger: Logger;
  /** TTL of answers and of negative answers (SOA minimum). Default 5 s. */
  readonly ttlSeconds?: number;
  /** TCP clients served at once; more are refused at accept. Default 64. */
  readonly tcpMaxConnections?: number;
  /** A TCP connection that sends nothing for this long is closed. Default 10 s. */
  readonly tcpIdleMs?: number;
  /** A TCP connection is closed after this long whatever it does. Default 60 s. */
  readonly tcpMaxLifetimeMs?: number;
}

export interface DnsResponder {
  /** Serves UDP and TCP on `address:port`; port 0 picks one free for both. Resolves with the bound port. */
  listen(address: string, port: number): Promise<{ port: number }>;
  /**
   * Serves on sockets already bound and handed over (systemd's bangerd-dns.socket binds
   * `<bridge address>:53` as root, with FreeBind, and passes a UDP and a TCP socket).
   */
  listenOnFds(fds: { readonly udp: number; readonly tcp: number }): Promise<{ address: string; port: number }>;
  /** Stops both listeners and closes open TCP connections. */
  close(): Promise<void>;
}

/** The first (only) question of a query, as raw bytes and as labels. */
interface RawQuestion {
  readonly bytes: Buffer;
  readonly labels: readonly string[];
  readonly type: number;
  readonly class: number;
}

interface Query {
  readonly id: number;
  readonly opcode: number;
  readonly rd: boolean;
  readonly questionCount: number;
  readonly question: RawQuestion | undefined;
}

class MalformedQueryError extends Error {}

/**
 * Reads the first question straight from the packet (it starts right after
 * the header, so a compression pointer there can only be malformed).
 */
function readFirstQuestion(message: Buffer): RawQuestion {
  const labels: string[] = [];
  let offset = 12;
  for (;;) {
    const length = message[offset];
    if (length === undefined) throw new MalformedQueryError("question name runs past the packet");
    offset += 1;
    if (length === 0) break;
    if ((length & 0xc0) !== 0) throw new MalformedQueryError("compressed or extended label in the question");
    if (offset + length > message.length) throw new MalformedQueryError("question label runs past the packet");
    labels.push(message.toString("latin1", offset, offset + length));
    offset += length;
  }
  if (offset - 12 > 255) throw new MalformedQueryError("question name longer than 255 bytes");
  if (offset + 4 > message.length) throw new MalformedQueryError("question type and class run past the packet");
  return {
    bytes: message.subarray(12, offset + 4),
    labels,
    type: message.readUInt16BE(offset),
    class: message.readUInt16BE(offset + 2),
  };
}

/** Parses a query; throws MalformedQueryError for anything that should get no answer. */
function parseQuery(message: Buffer): Query {
  let decoded: dnsPacket.DecodedPacket;
  try {
    decoded = dnsPacket.decode(message);
  } catch (error) {
    throw new MalformedQueryError(`undecodable packet: ${(error as Error).message}`);
  }
  if (decoded.flag_qr) throw new MalformedQueryError("packet is a response");
  const questionCount = decoded.questions?.length ?? 0;
  return {
    id: decoded.id ?? 0,
    opcode: ((decoded.flags ?? 0) >> 11) & 0xf,
    rd: decoded.flag_rd,
    questionCount,
    question: questionCount > 0 ? readFirstQuestion(message) : undefined,
  };
}

interface Answer {
  readonly rcode: Rcode;
  readonly authoritative: boolean;
  readonly answers?: dnsPacket.Answer[];
  readonly authorities?: dnsPacket.Answer[];
}

function encodeResponse(query: Query, echoQuestion: boolean, answer: Answer): Buffer {
  const flags =
    (query.opcode << 11) |
    (answer.authoritative ? dnsPacket.AUTHORITATIVE_ANSWER : 0) |
    (query.rd ? dnsPacket.RECURSION_DESIRED : 0) |
    answer.rcode;
  const packet = dnsPacket.encode({
    type: "response",
    id: query.id,
    flags,
    questions: [],
    answers: answer.answers ?? [],
    authorities: answer.authorities ?? [],
  });
  if (!echoQuestion || query.question === undefined) return packet;
  const response = Buffer.concat([packet.subarray(0, 12), query.question.bytes, packet.subarray(12)]);
  response.writeUInt16BE(1, 4);
  return response;
}

/** Header and question only, TC set: "ask again over TCP". */
function truncated(response: Buffer, query: Query): Buffer {
  const questionLength = query.question?.bytes.length ?? 0;
  const out = Buffer.from(response.subarray(0, 12 + questionLength));
  out.writeUInt16BE(out.readUInt16BE(2) | TC_BIT, 2);
  out.fill(0, 6, 12);
  return out;
}

/** The pure part: what to answer to one parsed query. */
function answerFor(query: Query, lookup: (name: string) => string | undefined, ttl: number): Answer {
  const question = query.question;
  if (query.opcode !== OPCODE_QUERY) return { rcode: RCODE.NOTIMP, authoritative: false };
  if (query.questionCount !== 1 || question === undefined) return { rcode: RCODE.FORMERR, authoritative: false };

  const labels = question.labels.map((label) => label.toLowerCase());
  const inZone = labels.length > 0 && labels[labels.length - 1] === DNS_ZONE;
  if (!inZone || (question.class !== CLASS.IN && question.class !== CLASS.ANY)) {
    return { rcode: RCODE.REFUSED, authoritative: false };
  }

  const soa: dnsPacket.Answer = {
    type: "SOA",
    name: DNS_ZONE,
    ttl,
    data: {
      mname: DNS_ZONE,
      rname: `hostmaster.${DNS_ZONE}`,
      serial: 1,
      refresh: 3600,
      retry: 600,
      expire: 86400,
      minimum: ttl,
    },
  };
  const nodata: Answer = { rcode: RCODE.NOERROR, authoritative: true, authorities: [soa] };
  const nxdomain: Answer = { rcode: RCODE.NXDOMAIN, authoritative: true, authorities: [soa] };

  if (labels.length === 1) {
    return question.type === TYPE.SOA || question.type === TYPE.ANY
      ? { rcode: RCODE.NOERROR, authoritative: true, answers: [soa] }
      : nodata;
  }
  const name = labels[0] ?? "";
  if (labels.length !== 2 || !VM_LABEL.test(name)) return nxdomain;
  const address = lookup(name);
  if (address === undefined) return nxdomain;
  if (question.type !== TYPE.A && question.type !== TYPE.ANY) return nodata;
  // The owner name as asked (case included), like the echoed question.
  const owner = question.labels.join(".");
  return { rcode: RCODE.NOERROR, authoritative: true, answers: [{ type: "A", name: owner, ttl, data: address }] };
}

const describeName = (question: RawQuestion | undefined): string | undefined =>
  question === undefined ? undefined : `${question.labels.join(".")}.`;

export function createDnsResponder(options: DnsResponderOptions): DnsResponder {
  const { lookup, logger } = options;
  const ttl = options.ttlSeconds ?? DEFAULT_TTL_SECONDS;
  const tcpIdleMs = options.tcpIdleMs ?? DEFAULT_TCP_IDLE_MS;
  const tcpMaxLifetimeMs = options.tcpMaxLifetimeMs ?? DEFAULT_TCP_MAX_LIFETIME_MS;

  let udp: UdpSocket | undefined;
  let tcp: Server | undefined;
  const connections = new Set<Socket>();

  /** One message in, at most one out; never throws. `undefined` means "send nothing". */
  function respond(message: Buffer, transport: "udp" | "tcp", peer: string): Buffer | undefined {
    let query: Query;
    try {
      query = parseQuery(message);
    } catch (error) {
      if (error instanceof MalformedQueryError) {
        logger.debug({ peer, transport, reason: error.message }, "dns: malformed packet dropped");
      } else {
        logger.error({ peer, transport, err: error }, "dns: unexpected error parsing a packet");
      }
      return undefined;
    }
    const qname = describeName(query.question);
    try {
      const answer = answerFor(query, lookup, ttl);
      const response = encodeResponse(query, answer.rcode !== RCODE.FORMERR, answer);
      return transport === "udp" && response.length > UDP_MAX_ANSWER ? truncated(response, query) : response;
    } catch (error) {
      logger.error({ peer, transport, qname, qtype: query.question?.type, err: error }, "dns: answering failed");
      try {
        return encodeResponse(query, true, { rcode: RCODE.SERVFAIL, authoritative: false });
      } catch {
        return undefined;
      }
    }
  }

  function onUdpMessage(socket: UdpSocket, message: Buffer, remote: RemoteInfo): void {
    const response = respond(message, "udp", `${remote.address}:${remote.port}`);
    if (response === undefined) return;
    socket.send(response, remote.port, remote.address, (error) => {
      if (error) logger.debug({ peer: `${remote.address}:${remote.port}`, err: error }, "dns: udp send failed");
    });
  }

  function onTcpConnection(socket: Socket): void {
    const peer = `${socket.remoteAddress ?? "?"}:${socket.remotePort ?? "?"}`;
    connections.add(socket);
    let pending: Buffer = Buffer.alloc(0);
    const lifetime = setTimeout(() => {
      logger.debug({ peer }, "dns: tcp connection reached its maximum lifetime");
      socket.destroy();
    }, tcpMaxLifetimeMs);
    lifetime.unref();
    socket.setTimeout(tcpIdleMs, () => socket.destroy());
    socket.on("close", () => {
      clearTimeout(lifetime);
      connections.delete(socket);
    });
    socket.on("error", (error) => logger.debug({ peer, err: error }, "dns: tcp connection error"));
    socket.on("data", (chunk: Buffer) => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      // RFC 1035 §4.2.2 / RFC 7766: two-byte length, then the message; queries may be pipelined.
      while (pending.length >= 2 && !socket.destroyed) {
        const length = pending.readUInt16BE(0);
        if (pending.length < 2 + length) break;
        const message = pending.subarray(2, 2 + length);
        pending = pending.subarray(2 + length);
        const response = respond(message, "tcp", peer);
        if (response === undefined) {
          socket.destroy();
          return;
        }
        const prefix = Buffer.alloc(2);
        prefix.writeUInt16BE(response.length);
        socket.write(Buffer.concat([prefix, response]));
        if (socket.writableLength > TCP_MAX_UNREAD_BYTES) {
          logger.debug({ peer }, "dns: tcp client does not read its answers; closing");
          socket.destroy();
          return;
        }
      }
    });
  }

  async function bindUdp(address: string, port: number, fd?: number): Promise<UdpSocket> {
    const socket = createSocket({ type: isIPv6(address) ? "udp6" : "udp4" });
    await new Promise<void>((resolve, reject) => {
      socket.once("error", reject);
      socket.bind(fd === undefined ? { address, port, exclusive: true } : { fd }, () => {
        socket.off("error", reject);
        resolve();
      });
    }).catch((error: unknown) => {
      socket.close();
      throw error;
    });
    socket.on("error", (error) => logger.error({ err: error }, "dns: udp socket error"));
    socket.on("message", (message, remote) => onUdpMessage(socket, message, remote));
    return socket;
  }

  async function bindTcp(address: string, port: number, fd?: number): Promise<Server> {
    const server = createServer({ allowHalfOpen: false }, onTcpConnection);
    server.maxConnections = options.tcpMaxConnections ?? DEFAULT_TCP_MAX_CONNECTIONS;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(fd === undefined ? { host: address, port, exclusive: true } : { fd }, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.on("error", (error) => logger.error({ err: error }, "dns: tcp server error"));
    return server;
  }

  async function closeUdp(socket: UdpSocket): Promise<void> {
    await new Promise<void>((resolve) => socket.close(() => resolve()));
  }

  return {
    async listen(address, port) {
      if (udp !== undefined || tcp !== undefined) throw new Error("dns responder is already listening");
      // Port 0: UDP picks a port, TCP must get the same one; retry if TCP's is taken.
      for (let attempt = 1; ; attempt++) {
        const udpSocket = await bindUdp(address, port);
        const bound = udpSocket.address().port;
        try {
          tcp = await bindTcp(address, bound);
          udp = udpSocket;
          logger.info({ address, port: bound, zone: DNS_ZONE }, "dns responder listening");
          return { port: bound };
        } catch (error) {
          await closeUdp(udpSocket);
          const inUse = (error as NodeJS.ErrnoException).code === "EADDRINUSE";
          if (port !== 0 || !inUse || attempt >= 5) throw error;
        }
      }
    },

    async listenOnFds(fds) {
      if (udp !== undefined || tcp !== undefined) throw new Error("dns responder is already listening");
      // The family only picks udp4/udp6 for an unbound socket; a passed one keeps its own.
      const udpSocket = await bindUdp("0.0.0.0", 0, fds.udp);
      try {
        tcp = await bindTcp("0.0.0.0", 0, fds.tcp);
      } catch (error) {
        await closeUdp(udpSocket);
        throw error;
      }
      udp = udpSocket;
      const { address, port } = udpSocket.address();
      logger.info({ address, port, zone: DNS_ZONE, passed: true }, "dns responder listening");
      return { address, port };
    },

    async close() {
      const server = tcp;
      const socket = udp;
      tcp = undefined;
      udp = undefined;
      for (const connection of connections) connection.destroy();
      await Promise.all([
        socket === undefined ? undefined : closeUdp(socket),
        server === undefined ? undefined : new Promise<void>((resolve) => server.close(() => resolve())),
      ]);
    },
  };
}
