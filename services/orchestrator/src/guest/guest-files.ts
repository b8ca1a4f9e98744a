/**
 * What banger writes into a VM's disks, as plain data: the root disk's
 * identity and network files (handed to the privileged helper's
 * WriteGuestFiles) and the work disk's entries (written by the owner with
 * work-disk.ts). Everything is validated here, once, before any disk is
 * touched. Guest paths use only the characters debugfs reads literally
 * (`A-Z a-z 0-9 . _ + @ = : , ~ -`), the same rule as the helper and the
 * config's `file_sync[].target`.
 */
import { constants } from "node:fs";
import { lstat, open, readdir, realpath } from "node:fs/promises";
import { isAbsolute, join, relative } from "node:path";
import { FailedPreconditionError, InvalidArgumentError, PermissionDeniedError } from "@banger/common";

/** A file of a guest filesystem: the shape of the helper's `GuestFile` (disk.proto). */
export interface GuestFile {
  /** Absolute guest path, e.g. "/etc/hostname". */
  readonly path: string;
  readonly content: Uint8Array;
  /** Permission bits, e.g. 0o644. */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
}

/**
 * An entry of the work disk. Its `path` is relative to the disk's root,
 * which the guest mounts at /root: `/root/.ssh` is `/.ssh` on the disk.
 */
export type WorkDiskEntry =
  | (GuestFile & { readonly kind: "file" })
  | {
      readonly kind: "directory";
      readonly path: string;
      readonly mode: number;
      readonly uid: number;
      readonly gid: number;
    };

/** Where the guest mounts the work disk. */
export const WORK_DISK_MOUNT = "/root";
/** Largest file_sync source, in bytes. */
export const FILE_SYNC_MAX_FILE_BYTES = 8 * 1024 * 1024;
/** Largest total of all file_sync sources of one VM, in bytes (they are held in memory until written). */
export const FILE_SYNC_MAX_TOTAL_BYTES = 64 * 1024 * 1024;
/** Most files and directories all file_sync directory sources of one VM may bring (one debugfs session writes them). */
export const FILE_SYNC_MAX_ENTRIES = 4096;
/** Deepest a file_sync directory source is walked (levels below the directory itself). */
export const FILE_SYNC_MAX_DEPTH = 16;

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const HOSTNAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
const DOMAIN_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** Characters debugfs reads literally in a path argument. */
const DEBUGFS_SAFE_NAME = /^[A-Za-z0-9._+@=:,~-]+$/;
const CONTROL = /[\u0000-\u001f\u007f]/;
const PUBLIC_KEY =
  /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\u0000-\u001f\u007f]*)?$/;

// ---------------------------------------------------------------- root disk

export interface GuestNetwork {
  /** The VM's name, used as its hostname: `^[a-z0-9][a-z0-9-]{0,62}$`. */
  readonly hostname: string;
  readonly guestIp: string;
  /** Prefix length of the bridge's subnet, 16–30. */
  readonly prefixLength: number;
  /** The bridge's address. */
  readonly gateway: string;
  /** Where banger's DNS answers `.vm` names: the bridge's address. */
  readonly nameserver: string;
  /** Search domain of the guests (banger's DNS zone); default "vm". */
  readonly domain?: string;
}

/**
 * The files that give a VM its name and static network configuration on its
 * root disk, for the images banger meets:
 *
 * - `/etc/hostname`, `/etc/hosts` (127.0.1.1 and the guest address both name
 *   `<name>.<domain> <name>`), `/etc/resolv.conf` (banger's DNS on the bridge,
 *   `search <domain>`; an image's resolv.conf symlink is replaced by the file);
 * - `/etc/systemd/network/10-banger.network` for systemd-networkd, matching the
 *   virtio NIC (type ether, name eth0: virtio-mmio devices get no predictable
 *   name);
 * - `/etc/network/interfaces.d/banger` for ifupdown (read when the image's
 *   /etc/network/interfaces sources interfaces.d, as Debian's does).
 *
 * The kernel's boot arguments also carry `bootArgsIp(...)`
 * (`ip=<guest>::<gw>:<mask>:<host>:eth0:off`), so the address is up before
 * init runs even on images that read none of these files.
 */
export function rootDiskFiles(network: GuestNetwork): GuestFile[] {
  const net = validNetwork(network);
  const fqdn = `${net.hostname}.${net.domain}`;
  const text = (path: string, lines: readonly string[]): GuestFile => ({
    path,
    content: Buffer.from(`${lines.join("\n")}\n`),
    mode: 0o644,
    uid: 0,
    gid: 0,
  });
  return [
    text("/etc/hostname", [net.hostname]),
    text("/etc/hosts", [
      "# Written by banger.",
      "127.0.0.1\tlocalhost",
      `127.0.1.1\t${fqdn} ${net.hostname}`,
      `${net.guestIp}\t${fqdn} ${net.hostname}`,
      "::1\tlocalhost ip6-localhost ip6-loopback",
      "ff02::1\tip6-allnodes",
      "ff02::2\tip6-allrouters",
    ]),
    text("/etc/resolv.conf", [
      `# Written by banger: its DNS on the bridge answers .${net.domain} names and forwards the rest.`,
      `nameserver ${net.nameserver}`,
      `search ${net.domain}`,
    ]),
    text("/etc/systemd/network/10-banger.network", [
      "# Written by banger. The kernel's ip= boot argument sets the same address before init.",
      "[Match]",
      "Type=ether",
      "Name=eth0",
      "",
      "[Network]",
      `Address=${net.guestIp}/${net.prefixLength}`,
      `Gateway=${net.gateway}`,
      `DNS=${net.nameserver}`,
      `Domains=${net.domain}`,
      "LinkLocalAddressing=no",
      "IPv6AcceptRA=no",
    ]),
    text("/etc/network/interfaces.d/banger", [
      "# Written by banger. The kernel's ip= boot argument sets the same address before init.",
      "auto eth0",
      "iface eth0 inet static",
      `    address ${net.guestIp}`,
      `    netmask ${netmask(net.prefixLength)}`,
      `    gateway ${net.gateway}`,
      `    dns-nameservers ${net.nameserver}`,
      `    dns-search ${net.domain}`,
    ]),
  ];
}

/**
 * The kernel's static IP boot argument for the VM:
 * `ip=<guest>::<gateway>:<netmask>:<hostname>:eth0:off`.
 */
export function bootArgsIp(network: Omit<GuestNetwork, "nameserver" | "domain">): string {
  const net = validNetwork({ ...network, nameserver: network.gateway });
  return `ip=${net.guestIp}::${net.gateway}:${netmask(net.prefixLength)}:${net.hostname}:eth0:off`;
}

/** "255.255.255.0" for 24. */
export function netmask(prefixLength: number): string {
  const mask = prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0;
  return toIp(mask);
}

function validNetwork(network: GuestNetwork): Required<GuestNetwork> {
  const { hostname, guestIp, prefixLength, gateway, nameserver } = network;
  const domain = network.domain ?? "vm";
  if (!HOSTNAME.test(hostname)) {
    throw new InvalidArgumentError(`hostname ${JSON.stringify(hostname)} must match ^[a-z0-9][a-z0-9-]{0,62}$`, {
      reason: "INVALID_HOSTNAME",
    });
  }
  if (!domain.split(".").every((label) => DOMAIN_LABEL.test(label)) || domain.length > 253) {
    throw new InvalidArgumentError(`domain ${JSON.stringify(domain)} is not a DNS name`, { reason: "INVALID_DOMAIN" });
  }
  for (const [field, value] of [
    ["guestIp", guestIp],
    ["gateway", gateway],
    ["nameserver", nameserver],
  ] as const) {
    if (!IPV4.test(value)) {
      throw new InvalidArgumentError(`${field} ${JSON.stringify(value)} is not an IPv4 address`, {
        reason: "INVALID_GUEST_NETWORK",
      });
    }
  }
  if (!Number.isInteger(prefixLength) || prefixLength < 16 || prefixLength > 30) {
    throw new InvalidArgumentError(`prefixLength ${prefixLength} must be 16–30`, { reason: "INVALID_GUEST_NETWORK" });
  }
  const size = 2 ** (32 - prefixLength);
  const guest = toNumber(guestIp);
  const gw = toNumber(gateway);
  const base = guest - (guest % size);
  if (guest === base || guest === base + size - 1) {
    throw new InvalidArgumentError(`${guestIp} is the network or broadcast address of its /${prefixLength}`, {
      reason: "INVALID_GUEST_NETWORK",
    });
  }
  if (gw - (gw % size) !== base || gw === guest) {
    throw new InvalidArgumentError(
      `gateway ${gateway} must be another address of ${toIp(base)}/${prefixLength}, the guest's subnet`,
      { reason: "INVALID_GUEST_NETWORK" },
    );
  }
  return { hostname, guestIp, prefixLength, gateway, nameserver, domain };
}

const toNumber = (ip: string): number => ip.split(".").reduce((n, part) => n * 256 + Number(part), 0);
const toIp = (n: number): string => [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join(".");

// ---------------------------------------------------------------- work disk

export interface FileSync {
  /** Absolute host path; its real path (symlinks followed) must be inside `home`. */
  readonly source: string;
  /** Absolute guest path strictly below /root. */
  readonly target: string;
  /** Permission bits of the guest file, 0–0o777. */
  readonly mode: number;
}

export interface WorkDiskInput {
  /** The banger SSH public key (one authorized_keys line). */
  readonly publicKey: string;
  /** Written as /root/.gitconfig when given. */
  readonly gitIdentity?: { readonly name: string; readonly email: string } | undefined;
  readonly fileSync: readonly FileSync[];
  /** The owner's home: file_sync reads nothing outside it. */
  readonly home: string;
}

/**
 * The entries of a new VM's work disk, with paths relative to the disk (see
 * `toWorkDiskPath`), all owned by 0:0: `/.ssh` (0700),
 * `/.ssh/authorized_keys` (0600) with the banger key, `/.gitconfig` (0644)
 * when a git identity is given, then each file_sync entry.
 *
 * file_sync copies a regular file, or a directory recursively (anything
 * else is FILE_SYNC_NOT_REGULAR): the source's real path (symlinks followed)
 * must be inside the real path of `home` (FILE_SYNC_OUTSIDE_HOME), each file
 * at most 8 MiB and all of them 64 MiB in all (FILE_SYNC_TOO_LARGE), read
 * without blocking on FIFOs and without following a symlink swapped in after
 * the check. A file gets the entry's `mode`; a directory's files and
 * subdirectories keep their own permission bits (the directory too). Inside a
 * directory, symlinks are not followed and are left out, as are sockets,
 * FIFOs and devices; a directory brings at most FILE_SYNC_MAX_ENTRIES entries
 * in all, FILE_SYNC_MAX_DEPTH levels deep (FILE_SYNC_TOO_LARGE), and names
 * debugfs cannot take are refused (FILE_SYNC_INVALID_TARGET). This is a
 * policy (what leaves the home), not a privilege boundary: the orchestrator
 * runs as the owner and reads only what the owner can. A target may not be a
 * path banger writes itself nor lie below a file target, nor be above another
 * entry unless it is a directory (FILE_SYNC_TARGET_CONFLICT).
 */
export async function workDiskFiles(input: WorkDiskInput): Promise<WorkDiskEntry[]> {
  const key = validPublicKey(input.publicKey);
  const entries: WorkDiskEntry[] = [
    { kind: "directory", path: "/.ssh", mode: 0o700, uid: 0, gid: 0 },
    { kind: "file", path: "/.ssh/authorized_keys", content: Buffer.from(`${key}\n`), mode: 0o600, uid: 0, gid: 0 },
  ];
  if (input.gitIdentity !== undefined) {
    entries.push({
      kind: "file",
      path: "/.gitconfig",
      content: Buffer.from(gitConfig(input.gitIdentity)),
      mode: 0o644,
      uid: 0,
      gid: 0,
    });
  }
  const targets = input.fileSync.map((entry, i) => {
    const field = `file_sync[${i}]`;
    if (!Number.isInteger(entry.mode) || entry.mode < 0 || entry.mode > 0o777) {
      throw new InvalidArgumentError(`${field}.mode must be 0–0777`, { reason: "FILE_SYNC_INVALID_MODE" });
    }
    if (typeof entry.source !== "string" || !isAbsolute(entry.source) || CONTROL.test(entry.source)) {
      throw new InvalidArgumentError(`${field}.source ${JSON.stringify(entry.source)} must be an absolute host path`, {
        reason: "FILE_SYNC_INVALID_SOURCE",
      });
    }
    return toWorkDiskPath(entry.target, `${field}.target`);
  });
  if (input.fileSync.length === 0) return entries;
  // Clashes whatever the sources are, before anything is read; then again once it is known which are directories.
  refuseConflicts(
    entries,
    targets,
    targets.map(() => ({ directory: true })),
  );
  const home = await realHome(input.home);
  const kinds = await Promise.all(
    input.fileSync.map((entry, i) => syncSourceKind(entry.source, home, `file_sync[${i}].source`)),
  );
  refuseConflicts(entries, targets, kinds);

  const budget: SyncBudget = { bytes: 0, entries: 0 };
  for (const [i, entry] of input.fileSync.entries()) {
    const field = `file_sync[${i}].source`;
    const target = targets[i] ?? "";
    if (kinds[i]?.directory === true) {
      entries.push(...(await readSyncTree(kinds[i].real, target, field, budget)));
      continue;
    }
    const content = await readSyncSource(entry.source, home, field);
    countBytes(budget, content.byteLength, `${field} ${entry.source}`);
    entries.push({ kind: "file", path: target, content, mode: entry.mode, uid: 0, gid: 0 });
  }
  // A directory's tree may hold the path of another entry's target.
  const seen = new Set<string>();
  for (const entry of entries) {
    if (seen.has(entry.path)) {
      throw new InvalidArgumentError(`/root${entry.path} would be written by two file_sync entries`, {
        reason: "FILE_SYNC_TARGET_CONFLICT",
      });
    }
    seen.add(entry.path);
  }
  return entries;
}

/** What file_sync sources have used of the limits so far. */
interface SyncBudget {
  bytes: number;
  entries: number;
}

function countBytes(budget: SyncBudget, bytes: number, at: string): void {
  budget.bytes += bytes;
  if (budget.bytes > FILE_SYNC_MAX_TOTAL_BYTES) {
    throw new FailedPreconditionError(
      `file_sync sources add up to more than ${FILE_SYNC_MAX_TOTAL_BYTES} bytes (at ${at})`,
      {
        reason: "FILE_SYNC_TOO_LARGE",
      },
    );
  }
}

/** Whether a source is a directory (and its real path), after the checks every source gets. */
async function syncSourceKind(
  source: string,
  home: string,
  field: string,
): Promise<{ directory: boolean; real: string }> {
  let real: string;
  try {
    real = await realpath(source);
  } catch (cause) {
    throw sourceError(cause, `${field} ${source}`);
  }
  refuseOutsideHome(source, real, home, field);
  const stats = await lstat(real).catch((cause: unknown) => {
    throw sourceError(cause, `${field} ${source}`);
  });
  return { directory: stats.isDirectory(), real };
}

/**
 * A directory source's tree, as work disk entries below `target`: directories (outermost first) and regular
 * files with their own permission bits; symlinks (never followed), sockets, FIFOs and devices left out. Each
 * file is read as a file source is (O_NOFOLLOW, the size limits); the tree is held to FILE_SYNC_MAX_ENTRIES and
 * FILE_SYNC_MAX_DEPTH.
 */
async function readSyncTree(real: string, target: string, field: string, budget: SyncBudget): Promise<WorkDiskEntry[]> {
  const entries: WorkDiskEntry[] = [];
  const count = (what: string) => {
    budget.entries += 1;
    if (budget.entries > FILE_SYNC_MAX_ENTRIES) {
      throw new FailedPreconditionError(
        `file_sync directories bring more than ${FILE_SYNC_MAX_ENTRIES} files and directories (at ${field} ${what})`,
        { reason: "FILE_SYNC_TOO_LARGE" },
      );
    }
  };
  const walk = async (hostDir: string, diskDir: string, level: number): Promise<void> => {
    const stats = await lstat(hostDir).catch((cause: unknown) => {
      throw sourceError(cause, `${field} ${hostDir}`);
    });
    if (!stats.isDirectory()) return; // replaced since it was listed: left out, as a symlink is
    count(hostDir);
    entries.push({ kind: "directory", path: diskDir, mode: stats.mode & 0o777, uid: 0, gid: 0 });
    const names = await readdir(hostDir, { withFileTypes: true }).catch((cause: unknown) => {
      throw sourceError(cause, `${field} ${hostDir}`);
    });
    names.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const dirent of names) {
      const hostPath = join(hostDir, dirent.name);
      if (!dirent.isFile() && !dirent.isDirectory()) continue; // symlinks, sockets, FIFOs, devices
      const diskPath = `${diskDir}/${dirent.name}`;
      const problem = diskPathProblem(diskPath);
      if (problem !== undefined) {
        throw new InvalidArgumentError(
          `${field}: ${hostPath} cannot be copied: its guest path /root${diskPath} ${problem}`,
          {
            reason: "FILE_SYNC_INVALID_TARGET",
          },
        );
      }
      if (dirent.isDirectory()) {
        if (level >= FILE_SYNC_MAX_DEPTH) {
          throw new FailedPreconditionError(`${field} is deeper than ${FILE_SYNC_MAX_DEPTH} levels (at ${hostPath})`, {
            reason: "FILE_SYNC_TOO_LARGE",
          });
        }
        await walk(hostPath, diskPath, level + 1);
        continue;
      }
      count(hostPath);
      const file = await readRegularFile(hostPath, `${field} ${hostPath}`);
      if (file === undefined) continue; // replaced by a symlink or something else since it was listed
      countBytes(budget, file.content.byteLength, `${field} ${hostPath}`);
      entries.push({ kind: "file", path: diskPath, content: file.content, mode: file.mode & 0o777, uid: 0, gid: 0 });
    }
  };
  await walk(real, target, 0);
  return entries;
}

/**
 * A guest path below /root as a path on the work disk: `/root/.ssh/x` →
 * `/.ssh/x`. Refuses paths that are not normalised, not strictly below
 * /root, or that use characters debugfs cannot take (FILE_SYNC_INVALID_TARGET).
 */
export function toWorkDiskPath(guestPath: string, field = "target"): string {
  const prefix = `${WORK_DISK_MOUNT}/`;
  if (typeof guestPath !== "string" || !guestPath.startsWith(prefix)) {
    throw new InvalidArgumentError(`${field} ${JSON.stringify(guestPath)} must be a guest path below /root`, {
      reason: "FILE_SYNC_INVALID_TARGET",
    });
  }
  const diskPath = guestPath.slice(WORK_DISK_MOUNT.length);
  const problem = diskPathProblem(diskPath);
  if (problem !== undefined) {
    throw new InvalidArgumentError(`${field} ${JSON.stringify(guestPath)} ${problem}`, {
      reason: "FILE_SYNC_INVALID_TARGET",
    });
  }
  return diskPath;
}

/**
 * Why a path on a disk is not one banger writes (absolute, normalised, not
 * "/", ≤ 4096 bytes, ≤ 255 per name, debugfs-safe characters); undefined if it is.
 */
export function diskPathProblem(path: string): string | undefined {
  if (!path.startsWith("/") || path === "/") return 'must be absolute and below "/"';
  if (Buffer.byteLength(path) > 4096) return "must be at most 4096 bytes";
  const names = path.slice(1).split("/");
  if (names.some((n) => n === "" || n === "." || n === "..")) {
    return 'must be normalised (no "." or ".." components, no "//", no trailing "/")';
  }
  if (names.some((n) => Buffer.byteLength(n) > 255)) return "has a component longer than 255 bytes";
  if (!names.every((n) => DEBUGFS_SAFE_NAME.test(n))) {
    return "may contain only A-Z a-z 0-9 and . _ + @ = : , ~ - (debugfs cannot take other characters safely)";
  }
  return undefined;
}

/** The directories above a disk path, outermost first: `/a/b/c` → `/a`, `/a/b`. */
export function diskParents(path: string): string[] {
  const names = path.slice(1).split("/");
  return names.slice(0, -1).map((_, i) => `/${names.slice(0, i + 1).join("/")}`);
}

function validPublicKey(value: string): string {
  const key = typeof value === "string" ? value.replace(/\r?\n$/, "") : "";
  if (!PUBLIC_KEY.test(key) || key.length > 16384) {
    throw new InvalidArgumentError("publicKey must be one OpenSSH public key line (e.g. ssh-ed25519 AAAA… comment)", {
      reason: "INVALID_PUBLIC_KEY",
    });
  }
  return key;
}

function gitConfig(identity: { readonly name: string; readonly email: string }): string {
  for (const [field, value] of [
    ["name", identity.name],
    ["email", identity.email],
  ] as const) {
    if (typeof value !== "string" || value.trim() === "" || value.length > 256 || CONTROL.test(value)) {
      throw new InvalidArgumentError(`gitIdentity.${field} must be 1–256 characters without control characters`, {
        reason: "INVALID_GIT_IDENTITY",
      });
    }
  }
  // A quoted git-config value: only `"` and `\` need escaping.
  const quote = (s: string) => `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
  return `[user]\n\tname = ${quote(identity.name)}\n\temail = ${quote(identity.email)}\n`;
}

/**
 * Each path once, and no file below a file: a file_sync target may not be a
 * path banger writes, nor lie below a file, nor be above another entry
 * (it may lie in banger's /.ssh directory, e.g. /root/.ssh/config).
 */
function refuseConflicts(
  own: readonly WorkDiskEntry[],
  targets: readonly string[],
  kinds: readonly { readonly directory: boolean }[],
): void {
  const all = [
    ...own.map((e) => ({ path: e.path, dir: e.kind === "directory", label: `banger's own /root${e.path}` })),
    ...targets.map((path, i) => ({
      path,
      dir: kinds[i]?.directory === true,
      label: `file_sync[${i}].target /root${path}`,
    })),
  ];
  for (const [i, a] of all.entries()) {
    for (const b of all.slice(i + 1)) {
      if (a.label.startsWith("banger") && b.label.startsWith("banger")) continue;
      const clash =
        a.path === b.path || (!a.dir && b.path.startsWith(`${a.path}/`)) || (!b.dir && a.path.startsWith(`${b.path}/`));
      if (clash) {
        throw new InvalidArgumentError(`${b.label} conflicts with ${a.label}`, { reason: "FILE_SYNC_TARGET_CONFLICT" });
      }
    }
  }
}

async function realHome(home: string): Promise<string> {
  if (typeof home !== "string" || !isAbsolute(home)) {
    throw new InvalidArgumentError(`home ${JSON.stringify(home)} must be an absolute path`, {
      reason: "INVALID_ARGUMENT",
    });
  }
  try {
    return await realpath(home);
  } catch (cause) {
    throw new FailedPreconditionError(`the owner's home ${home} cannot be resolved`, {
      reason: "HOME_MISSING",
      cause,
    });
  }
}

/** Reads one file_sync source under the rules of `workDiskFiles`. */
async function readSyncSource(source: string, home: string, field: string): Promise<Uint8Array> {
  let real: string;
  try {
    real = await realpath(source);
  } catch (cause) {
    throw sourceError(cause, `${field} ${source}`);
  }
  refuseOutsideHome(source, real, home, field);
  const file = await readRegularFile(real, `${field} ${source}`);
  if (file === undefined) {
    throw new FailedPreconditionError(`${field} ${source} is not a regular file or a directory`, {
      reason: "FILE_SYNC_NOT_REGULAR",
    });
  }
  return file.content;
}

function refuseOutsideHome(source: string, real: string, home: string, field: string): void {
  const rel = relative(home, real);
  if (rel === "" || rel === ".." || rel.startsWith("../") || isAbsolute(rel)) {
    throw new PermissionDeniedError(
      `${field} ${source}${real === source ? "" : ` (resolves to ${real})`} is outside the owner's home ${home}`,
      { reason: "FILE_SYNC_OUTSIDE_HOME" },
    );
  }
}

/**
 * A regular file's bytes and mode, opened without following a symlink and without blocking on a FIFO;
 * undefined when `path` is not a regular file (a symlink is ELOOP: FILE_SYNC_UNREADABLE).
 */
async function readRegularFile(path: string, what: string): Promise<{ content: Uint8Array; mode: number } | undefined> {
  let handle;
  try {
    // O_NOFOLLOW: a symlink swapped in after realpath is refused; O_NONBLOCK: a FIFO does not hang the open.
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (cause) {
    throw sourceError(cause, what);
  }
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) return undefined;
    const tooLarge = () =>
      new FailedPreconditionError(`${what} is larger than ${FILE_SYNC_MAX_FILE_BYTES} bytes`, {
        reason: "FILE_SYNC_TOO_LARGE",
      });
    if (stats.size > FILE_SYNC_MAX_FILE_BYTES) throw tooLarge();
    // Read at most one byte past the cap: a file that grew since fstat is caught too. The buffer starts at the
    // size fstat gave (a directory of small files allocates little) and grows to the cap if the file grew.
    let buffer = Buffer.alloc(stats.size + 1);
    let length = 0;
    for (;;) {
      if (length === buffer.length) {
        const larger = Buffer.alloc(FILE_SYNC_MAX_FILE_BYTES + 1);
        buffer.copy(larger);
        buffer = larger;
      }
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > FILE_SYNC_MAX_FILE_BYTES) throw tooLarge();
    }
    return { content: Buffer.from(buffer.subarray(0, length)), mode: stats.mode };
  } catch (cause) {
    throw cause instanceof Error && "reason" in cause ? cause : sourceError(cause, what);
  } finally {
    await handle.close();
  }
}

function sourceError(cause: unknown, what: string): Error {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  if (code === "ENOENT" || code === "ENOTDIR") {
    return new FailedPreconditionError(`${what} does not exist`, { reason: "FILE_SYNC_MISSING", cause });
  }
  if (code === "EACCES" || code === "EPERM") {
    return new PermissionDeniedError(`${what} cannot be read by the owner`, { reason: "FILE_SYNC_UNREADABLE", cause });
  }
  if (code === "ELOOP") {
    return new FailedPreconditionError(`${what} is a symlink loop or was replaced by a symlink`, {
      reason: "FILE_SYNC_UNREADABLE",
      cause,
    });
  }
  return new FailedPreconditionError(`${what} cannot be read: ${String(cause)}`, {
    reason: "FILE_SYNC_UNREADABLE",
    cause,
  });
}
