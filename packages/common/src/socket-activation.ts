import { readFileSync, readlinkSync } from "node:fs";

/** The first file descriptor systemd passes (sd_listen_fds(3): SD_LISTEN_FDS_START). */
export const SD_LISTEN_FDS_START = 3;

/** A listening socket systemd created and passed to this process (socket activation). */
export interface ActivatedSocket {
  readonly fd: number;
  /** The path it is bound to, from /proc/net/unix; undefined when that cannot be read. */
  readonly path: string | undefined;
}

/**
 * The passed descriptor named by `LISTEN_FDS`/`LISTEN_PID`, when they are
 * meant for `pid` (a variable inherited from a parent that was activated is
 * not for us). banger's units pass exactly one socket, at fd 3.
 */
export function listenFdFromEnv(env: NodeJS.ProcessEnv, pid: number): number | undefined {
  if (env["LISTEN_PID"] !== String(pid)) return undefined;
  const count = Number(env["LISTEN_FDS"]);
  return Number.isInteger(count) && count >= 1 ? SD_LISTEN_FDS_START : undefined;
}

/** The path the Unix socket open at `fd` is bound to, matched by inode in `/proc/net/unix`. */
export function boundPathOfFd(fd: number, procRoot = "/proc"): string | undefined {
  try {
    const inode = /^socket:\[(\d+)\]$/.exec(readlinkSync(`${procRoot}/self/fd/${fd}`))?.[1];
    if (inode === undefined) return undefined;
    // "Num RefCount Protocol Flags Type St Inode Path"
    for (const line of readFileSync(`${procRoot}/net/unix`, "utf8").split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields[6] === inode) return fields.slice(7).join(" ") || undefined;
    }
  } catch {
    // /proc not readable: the caller goes on without the check
  }
  return undefined;
}

/**
 * Every descriptor passed with `LISTEN_FDS`/`LISTEN_PID` (when meant for
 * `pid`), in order from fd 3, with its `LISTEN_FDNAMES` name (systemd's
 * FileDescriptorName=, by default the socket unit's name; "" when unnamed).
 */
export function listenFdsFromEnv(env: NodeJS.ProcessEnv, pid: number): { fd: number; name: string }[] {
  if (env["LISTEN_PID"] !== String(pid)) return [];
  const count = Number(env["LISTEN_FDS"]);
  if (!Number.isInteger(count) || count < 1) return [];
  const names = (env["LISTEN_FDNAMES"] ?? "").split(":");
  return Array.from({ length: count }, (_, i) => ({ fd: SD_LISTEN_FDS_START + i, name: names[i] ?? "" }));
}

/** The name banger's units give the orchestrator's DNS sockets (bangerd-dns.socket: UDP, then TCP). */
export const DNS_FD_NAME = "dns";

let taken: { socket: ActivatedSocket | undefined; named: Map<string, number[]> } | undefined;

function take(): NonNullable<typeof taken> {
  if (!taken) {
    const passed = listenFdsFromEnv(process.env, process.pid);
    // The service's own socket: the first one not named for another use.
    const main = passed.find((p) => p.name !== DNS_FD_NAME);
    const named = new Map<string, number[]>();
    for (const { fd, name } of passed) named.set(name, [...(named.get(name) ?? []), fd]);
    taken = { socket: main === undefined ? undefined : { fd: main.fd, path: boundPathOfFd(main.fd) }, named };
    delete process.env["LISTEN_PID"];
    delete process.env["LISTEN_FDS"];
    delete process.env["LISTEN_FDNAMES"];
  }
  return taken;
}

/**
 * The socket systemd passed to this process for its RPC server, if any. Taken
 * once: the `LISTEN_*` variables are removed so no child (a VMM, `ip`)
 * believes the socket is meant for it. (Node marks inherited descriptors
 * close-on-exec at start-up, so children do not receive the socket itself.)
 */
export function activatedSocket(): ActivatedSocket | undefined {
  return take().socket;
}

/** The descriptors systemd passed under `name` (FileDescriptorName=), in the order the unit lists them. */
export function activatedFds(name: string): readonly number[] {
  return take().named.get(name) ?? [];
}
