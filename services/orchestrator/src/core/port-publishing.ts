/**
 * Published ports (`vm create -p`, `vm port add`): bangerd itself listens on
 * the host port, as the owner, and relays each TCP connection (or each UDP
 * client's datagrams) to the guest's port on its bridge address. A user-space
 * relay rather than DNAT through the helper (docs/ARCHITECTURE.md, "Published
 * ports"): the helper stays as narrow as it is, the host reaches a published
 * port on 127.0.0.1 as the LAN does on the host's address (no output-chain
 * rule, no route_localnet), the kernel refuses a port something else holds
 * (EADDRINUSE) and a crashed bangerd leaves no rule behind: its listeners die
 * with it.
 *
 * Limits (a stranger on the LAN can open connections): 256 relayed TCP
 * connections and 256 UDP clients per published port; a UDP client silent for
 * a minute is forgotten.
 */
import { createSocket, type Socket as UdpSocket, type RemoteInfo } from "node:dgram";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { networkInterfaces } from "node:os";
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, type Logger } from "@banger/common";
import { PORT_PROTOCOLS, type PortProtocol, type PublishedPort, type VmRecord } from "../store/index.js";
import type { Capability } from "./capabilities.js";

/** Relayed TCP connections per published port; more wait in the kernel's backlog, then are refused. */
export const MAX_CONNECTIONS_PER_PORT = 256;
/** UDP clients (source address and port) relayed per published port; datagrams of further ones are dropped. */
export const MAX_UDP_CLIENTS_PER_PORT = 256;
/** How long a UDP client's relay lives after its last datagram either way. */
export const UDP_IDLE_MS = 60_000;
/** Published ports per VM. */
export const MAX_PORTS_PER_VM = 64;

/** A port as asked for: empty host address = every address, empty protocol = tcp. */
export interface PortRequest {
  readonly hostIp: string;
  readonly hostPort: number;
  readonly guestPort: number;
  readonly protocol: string;
}

/** `tcp 0.0.0.0:8080 → 80`. */
export const describePort = (port: PublishedPort): string =>
  `${port.hostIp}:${port.hostPort}→${port.guestPort}/${port.protocol}`;

/** The host's own IPv4 addresses (every interface's), which a port may be published on besides 0.0.0.0. */
export function hostIpv4Addresses(): Set<string> {
  const found = new Set(["127.0.0.1"]);
  for (const addresses of Object.values(networkInterfaces())) {
    for (const address of addresses ?? []) if (address.family === "IPv4") found.add(address.address);
  }
  return found;
}

export function validPortNumber(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 1 || value > 65535) {
    throw new InvalidArgumentError(`${what} must be between 1 and 65535, got ${value}`, { reason: "INVALID_PORT" });
  }
  return value;
}

export function validProtocol(value: string): PortProtocol {
  const protocol = PORT_PROTOCOLS.find((p) => p === (value || "tcp"));
  if (protocol === undefined) {
    throw new InvalidArgumentError(`protocol must be tcp or udp, got ${JSON.stringify(value)}`, {
      reason: "INVALID_PORT",
    });
  }
  return protocol;
}

/**
 * Checks a requested port: numbers in range, tcp or udp, a host address of this host's (or 0.0.0.0),
 * a host port below 1024 only when `allowPrivileged` (config network.publish_privileged_ports).
 */
export function validPublishedPort(
  req: PortRequest,
  options: { allowPrivileged: boolean; hostAddresses?: () => Set<string> },
): PublishedPort {
  const hostPort = validPortNumber(req.hostPort, "host port");
  const guestPort = validPortNumber(req.guestPort, "guest port");
  const protocol = validProtocol(req.protocol);
  const hostIp = req.hostIp || "0.0.0.0";
  if (hostIp !== "0.0.0.0" && !(options.hostAddresses ?? hostIpv4Addresses)().has(hostIp)) {
    throw new InvalidArgumentError(
      `host address ${JSON.stringify(hostIp)} is not one of this host's IPv4 addresses (or 0.0.0.0 for all of them)`,
      { reason: "HOST_IP_NOT_LOCAL" },
    );
  }
  if (hostPort < 1024 && !options.allowPrivileged) {
    throw new InvalidArgumentError(
      `host port ${hostPort} is privileged (below 1024); publish a port from 1024 up, or set ` +
        "network.publish_privileged_ports = true in the config (bangerd then needs CAP_NET_BIND_SERVICE)",
      { reason: "PRIVILEGED_PORT" },
    );
  }
  return { hostIp, hostPort, guestPort, protocol };
}

/** Whether two published ports want the same host socket (0.0.0.0 overlaps every address). */
export function portsClash(a: PublishedPort, b: PublishedPort): boolean {
  return (
    a.hostPort === b.hostPort &&
    a.protocol === b.protocol &&
    (a.hostIp === b.hostIp || a.hostIp === "0.0.0.0" || b.hostIp === "0.0.0.0")
  );
}

/**
 * Refuses `wanted` ports that clash with each other or with a port another VM (or `self`, already)
 * publishes: ALREADY_EXISTS, PORT_PUBLISHED.
 */
export function checkNoClash(
  wanted: readonly PublishedPort[],
  vms: readonly Pick<VmRecord, "name" | "publishedPorts">[],
): void {
  wanted.forEach((port, i) => {
    const twin = wanted.slice(0, i).find((other) => portsClash(port, other));
    if (twin) {
      throw new AlreadyExistsError(`host port ${port.hostPort}/${port.protocol} is asked for twice`, {
        reason: "PORT_PUBLISHED",
      });
    }
    for (const vm of vms) {
      const taken = vm.publishedPorts.find((other) => portsClash(port, other));
      if (taken) {
        throw new AlreadyExistsError(
          `host port ${port.hostPort}/${port.protocol} is already published by VM ${vm.name} (${describePort(taken)})`,
          { reason: "PORT_PUBLISHED" },
        );
      }
    }
  });
}

/** bangerd's listeners of published ports. */
export interface PortRelays {
  /**
   * Listens on the port for VM `vmId` and relays to `guestIp`; idempotent. Errors: ALREADY_EXISTS
   * HOST_PORT_IN_USE (something on the host holds it), FAILED_PRECONDITION HOST_PORT_NOT_BINDABLE,
   * INVALID_ARGUMENT HOST_IP_NOT_LOCAL.
   */
  open(vmId: string, guestIp: string, port: PublishedPort): Promise<void>;
  /** Closes the VM's listener of `port` (all of them when none is named) and the connections it relays. */
  close(vmId: string, port?: PublishedPort): Promise<void>;
  /** Whether bangerd could listen on the port now: binds it and lets it go (same errors as `open`). */
  probe(port: PublishedPort): Promise<void>;
  /** The ports VM `vmId` listens on now. */
  listening(vmId: string): PublishedPort[];
}

interface Relay {
  readonly port: PublishedPort;
  close(): Promise<void>;
}

const keyOf = (port: PublishedPort) => `${port.protocol}/${port.hostIp}/${port.hostPort}`;

export function createPortRelays(logger: Logger): PortRelays {
  const byVm = new Map<string, Map<string, Relay>>();
  return {
    async open(vmId, guestIp, port) {
      const relays = byVm.get(vmId) ?? new Map<string, Relay>();
      const existing = relays.get(keyOf(port));
      if (existing?.port.guestPort === port.guestPort) return;
      if (existing) await existing.close();
      const relay =
        port.protocol === "tcp" ? await tcpRelay(port, guestIp, logger) : await udpRelay(port, guestIp, logger);
      relays.set(keyOf(port), relay);
      byVm.set(vmId, relays);
      logger.info({ vm: vmId, port: describePort(port), guest: guestIp }, "published a port");
    },
    async close(vmId, port) {
      const relays = byVm.get(vmId);
      if (!relays) return;
      const closing = port === undefined ? [...relays.keys()] : [keyOf(port)];
      for (const key of closing) {
        await relays.get(key)?.close();
        relays.delete(key);
      }
      if (relays.size === 0) byVm.delete(vmId);
    },
    async probe(port) {
      const relay =
        port.protocol === "tcp" ? await tcpRelay(port, "127.0.0.1", logger) : await udpRelay(port, "127.0.0.1", logger);
      await relay.close();
    },
    listening: (vmId) => [...(byVm.get(vmId)?.values() ?? [])].map((relay) => relay.port),
  };
}

/** The error a failed bind becomes. */
function bindError(error: NodeJS.ErrnoException, port: PublishedPort): Error {
  const where = `${port.hostIp}:${port.hostPort}/${port.protocol}`;
  switch (error.code) {
    case "EADDRINUSE":
      return new AlreadyExistsError(`host port ${where} is already in use on the host`, {
        reason: "HOST_PORT_IN_USE",
        cause: error,
      });
    case "EACCES":
    case "EPERM":
      return new FailedPreconditionError(
        `bangerd may not listen on ${where} (${error.code}): ports below 1024 need CAP_NET_BIND_SERVICE ` +
          "(AmbientCapabilities= in bangerd's unit) or a lower net.ipv4.ip_unprivileged_port_start",
        { reason: "HOST_PORT_NOT_BINDABLE", cause: error },
      );
    case "EADDRNOTAVAIL":
      return new InvalidArgumentError(`host address ${port.hostIp} is not one of this host's`, {
        reason: "HOST_IP_NOT_LOCAL",
        cause: error,
      });
    default:
      return error;
  }
}

function listen(server: Server, port: PublishedPort): Promise<void> {
  return new Promise((resolve, reject) => {
    const failed = (error: NodeJS.ErrnoException) => reject(bindError(error, port));
    server.once("error", failed);
    server.listen({ host: port.hostIp, port: port.hostPort, exclusive: true }, () => {
      server.off("error", failed);
      resolve();
    });
  });
}

async function tcpRelay(port: PublishedPort, guestIp: string, logger: Logger): Promise<Relay> {
  const connections = new Set<Socket>();
  // Half-open on both sides: a client that shuts its writing side still gets the guest's answer.
  const server = createServer({ allowHalfOpen: true }, (client) => {
    const upstream = createConnection({ host: guestIp, port: port.guestPort, allowHalfOpen: true });
    connections.add(client);
    connections.add(upstream);
    const done = () => {
      client.destroy();
      upstream.destroy();
      connections.delete(client);
      connections.delete(upstream);
    };
    client.on("error", done).on("close", done);
    upstream.on("error", done).on("close", done);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.maxConnections = MAX_CONNECTIONS_PER_PORT;
  server.on("error", (error) => logger.warn({ port: describePort(port), err: error }, "a published port failed"));
  await listen(server, port);
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of connections) socket.destroy();
      }),
  };
}

async function udpRelay(port: PublishedPort, guestIp: string, logger: Logger): Promise<Relay> {
  const socket = createSocket({ type: "udp4", reuseAddr: false });
  const clients = new Map<string, { upstream: UdpSocket; timer: NodeJS.Timeout; connected: Promise<void> }>();
  const forget = (key: string) => {
    const client = clients.get(key);
    if (!client) return;
    clearTimeout(client.timer);
    client.upstream.close();
    clients.delete(key);
  };
  const clientOf = (from: RemoteInfo) => {
    const key = `${from.address}:${from.port}`;
    let client = clients.get(key);
    if (client) {
      client.timer.refresh();
      return client;
    }
    if (clients.size >= MAX_UDP_CLIENTS_PER_PORT) return undefined;
    const upstream = createSocket("udp4");
    upstream.on("message", (data) => {
      // An answer that comes as the port closes has no one to go to.
      if (clients.get(key)?.upstream !== upstream) return;
      clients.get(key)?.timer.refresh();
      socket.send(data, from.port, from.address);
    });
    upstream.on("error", () => forget(key));
    const connected = new Promise<void>((resolve) => upstream.connect(port.guestPort, guestIp, resolve));
    client = { upstream, timer: setTimeout(() => forget(key), UDP_IDLE_MS), connected };
    clients.set(key, client);
    return client;
  };
  socket.on("message", (data, from) => {
    const client = clientOf(from);
    if (!client) return; // too many clients: dropped, as a full link would
    // A datagram that came before the upstream socket connected waits for it.
    void client.connected.then(() => {
      if (clients.get(`${from.address}:${from.port}`) === client) client.upstream.send(data);
    });
  });
  await new Promise<void>((resolve, reject) => {
    const failed = (error: NodeJS.ErrnoException) => reject(bindError(error, port));
    socket.once("error", failed);
    socket.bind({ address: port.hostIp, port: port.hostPort, exclusive: true }, () => {
      socket.off("error", failed);
      resolve();
    });
  });
  socket.on("error", (error) => logger.warn({ port: describePort(port), err: error }, "a published port failed"));
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const key of [...clients.keys()]) forget(key);
        socket.close(() => resolve());
      }),
  };
}

/**
 * The VM's published ports listen while it runs: opened after its VMM started (and at bangerd's
 * start for VMs found running), closed when it stops, is deleted or its start unwinds.
 */
export function publishedPortsCapability(relays: PortRelays): Capability {
  return {
    name: "published-ports",
    dependsOn: [],
    async postStart(vm) {
      // Every port is tried: at bangerd's start a port that cannot listen does not keep the others down.
      const failures: Error[] = [];
      for (const port of vm.publishedPorts) {
        await relays.open(vm.id, vm.guestIp, port).catch((error: unknown) => failures.push(error as Error));
      }
      if (failures[0] !== undefined) throw failures[0];
    },
    async cleanup(vm) {
      await relays.close(vm.id);
    },
  };
}
