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
 */
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from "node:dgram";
import { createServer, isIPv6, type Server, type Socket } from "node:net";
import type { Logger } from "@banger/common";
import { DNS_ZONE, respond, type AnswerContext } from "./message.js";

export { DNS_ZONE } from "./message.js";

const DEFAULT_TTL_SECONDS = 5;
const DEFAULT_TCP_MAX_CONNECTIONS = 64;
const DEFAULT_TCP_IDLE_MS = 10_000;
const DEFAULT_TCP_MAX_LIFETIME_MS = 60_000;
/** Responses a TCP client has not read yet before it is cut off (it pipelines without reading). */
const TCP_MAX_UNREAD_BYTES = 64 * 1024;

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

/** What the listeners share: answering, the TCP limits and the open TCP connections. */
interface ListenerContext extends AnswerContext {
  readonly tcpMaxConnections: number;
  readonly tcpIdleMs: number;
  readonly tcpMaxLifetimeMs: number;
  readonly connections: Set<Socket>;
}

export function createDnsResponder(options: DnsResponderOptions): DnsResponder {
  const context: ListenerContext = {
    lookup: options.lookup,
    logger: options.logger,
    ttl: options.ttlSeconds ?? DEFAULT_TTL_SECONDS,
    tcpMaxConnections: options.tcpMaxConnections ?? DEFAULT_TCP_MAX_CONNECTIONS,
    tcpIdleMs: options.tcpIdleMs ?? DEFAULT_TCP_IDLE_MS,
    tcpMaxLifetimeMs: options.tcpMaxLifetimeMs ?? DEFAULT_TCP_MAX_LIFETIME_MS,
    connections: new Set<Socket>(),
  };
  let udp: UdpSocket | undefined;
  let tcp: Server | undefined;

  return {
    async listen(address, port) {
      if (udp !== undefined || tcp !== undefined) throw new Error("dns responder is already listening");
      // Port 0: UDP picks a port, TCP must get the same one; retry if TCP's is taken.
      for (let attempt = 1; ; attempt++) {
        const udpSocket = await bindUdp(context, address, port);
        const bound = udpSocket.address().port;
        try {
          tcp = await bindTcp(context, address, bound);
          udp = udpSocket;
          context.logger.info({ address, port: bound, zone: DNS_ZONE }, "dns responder listening");
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
      const udpSocket = await bindUdp(context, "0.0.0.0", 0, fds.udp);
      try {
        tcp = await bindTcp(context, "0.0.0.0", 0, fds.tcp);
      } catch (error) {
        await closeUdp(udpSocket);
        throw error;
      }
      udp = udpSocket;
      const { address, port } = udpSocket.address();
      context.logger.info({ address, port, zone: DNS_ZONE, passed: true }, "dns responder listening");
      return { address, port };
    },

    async close() {
      const server = tcp;
      const socket = udp;
      tcp = undefined;
      udp = undefined;
      for (const connection of context.connections) connection.destroy();
      await Promise.all([
        socket === undefined ? undefined : closeUdp(socket),
        server === undefined ? undefined : new Promise<void>((resolve) => server.close(() => resolve())),
      ]);
    },
  };
}

function onUdpMessage(context: ListenerContext, socket: UdpSocket, message: Buffer, remote: RemoteInfo): void {
  const { logger } = context;
  const response = respond(context, message, "udp", `${remote.address}:${remote.port}`);
  if (response === undefined) return;
  socket.send(response, remote.port, remote.address, (error) => {
    if (error) logger.debug({ peer: `${remote.address}:${remote.port}`, err: error }, "dns: udp send failed");
  });
}

function onTcpConnection(context: ListenerContext, socket: Socket): void {
  const { logger, connections, tcpIdleMs, tcpMaxLifetimeMs } = context;
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
      const response = respond(context, message, "tcp", peer);
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

async function bindUdp(context: ListenerContext, address: string, port: number, fd?: number): Promise<UdpSocket> {
  const { logger } = context;
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
  socket.on("message", (message, remote) => onUdpMessage(context, socket, message, remote));
  return socket;
}

async function bindTcp(context: ListenerContext, address: string, port: number, fd?: number): Promise<Server> {
  const { logger } = context;
  const server = createServer({ allowHalfOpen: false }, (socket) => onTcpConnection(context, socket));
  server.maxConnections = context.tcpMaxConnections;
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
