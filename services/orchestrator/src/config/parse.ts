/**
 * Checks and defaults the parsed TOML of a config file against `CONFIG_REFERENCE`:
 * unknown keys at any level, wrong types and bad values are all collected, then
 * thrown together as one `ConfigError`.
 */
import { isIPv4, isIPv6 } from "node:net";
import { isAbsolute, join, normalize, relative } from "node:path";
import { TomlDate, TomlError, parse } from "smol-toml";
import {
  CONFIG_LIMITS,
  CONFIG_REFERENCE,
  ConfigError,
  DEFAULT_CONFIG,
  type ConfigProblem,
  type ConfigValues,
  type FileSyncEntry,
  type VmmSetting,
} from "./schema.js";

/** Checks and defaults the text of a config file; `file` names it in problems. Throws ConfigError. */
export function parseConfig(text: string, file: string, home: string): ConfigValues {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text, { integersAsBigInt: true });
  } catch (error) {
    if (!(error instanceof TomlError)) throw error;
    const reason = `TOML syntax error: ${error.message.replace(/^Invalid TOML document: /, "").split("\n")[0]}`;
    throw new ConfigError([{ file, key: `line ${error.line}, column ${error.column}`, reason }], { cause: error });
  }
  const c = new Checker(file, normalize(home));
  const values = c.document(doc);
  if (c.problems.length > 0) throw new ConfigError(c.problems);
  return values;
}

const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const BRIDGE = /^bgr[a-z0-9]{1,12}$/;
const DOTTED = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const HOST_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** Characters debugfs reads literally (the work disk is written with debugfs). */
const GUEST_NAME = /^[A-Za-z0-9._+@=:,~-]+$/;
const MODE = /^(0o?)?[0-7]{3}$/;

/** Allowed keys of each table, from CONFIG_REFERENCE. */
function keysOf(prefix: string): string[] {
  const keys = new Set<string>();
  for (const { key } of CONFIG_REFERENCE) {
    if (prefix === "") keys.add(key.split(/[.[]/)[0] ?? key);
    else if (key.startsWith(`${prefix}.`)) keys.add(key.slice(prefix.length + 1).split(".")[0] ?? "");
  }
  return [...keys];
}

type Table = Record<string, unknown>;

class Checker {
  readonly problems: ConfigProblem[] = [];
  constructor(
    private readonly file: string,
    private readonly home: string,
  ) {}

  document(doc: Table): ConfigValues {
    const d = DEFAULT_CONFIG;
    this.unknownKeys(doc, "", keysOf(""));
    const vm = this.table(doc, "vm");
    const image = this.table(doc, "image");
    const network = this.table(doc, "network");
    const operations = this.table(doc, "operations");
    const firecracker = this.table(doc, "firecracker");
    const qemu = this.table(doc, "qemu");
    const registries = this.table(doc, "registries");
    const ssh = this.table(doc, "ssh");
    return {
      defaultImage: this.string(doc, "default_image", d.defaultImage, (s) =>
        NAME.test(s) ? undefined : `must be an image name matching ${NAME.source}`,
      ),
      defaultKernel: this.string(doc, "default_kernel", d.defaultKernel, (s) =>
        s === "" || NAME.test(s) ? undefined : `must be "" or a kernel name matching ${NAME.source}`,
      ),
      vmm: this.string(doc, "vmm", d.vmm, (s) =>
        s === "auto" || s === "firecracker" || s === "qemu-microvm"
          ? undefined
          : 'must be "auto", "firecracker" or "qemu-microvm"',
      ) as VmmSetting,
      vm: {
        vcpu: this.integer(vm, "vm.vcpu", d.vm.vcpu, CONFIG_LIMITS.vcpu),
        memoryMib: this.integer(vm, "vm.memory_mib", d.vm.memoryMib, CONFIG_LIMITS.memoryMib),
        workDiskMib: this.integer(vm, "vm.work_disk_mib", d.vm.workDiskMib, CONFIG_LIMITS.workDiskMib),
        nat: this.boolean(vm, "vm.nat", d.vm.nat),
        logMaxMib: this.integer(vm, "vm.log_max_mib", d.vm.logMaxMib, CONFIG_LIMITS.logMaxMib),
      },
      image: {
        minRootfsMib: this.integer(image, "image.min_rootfs_mib", d.image.minRootfsMib, CONFIG_LIMITS.minRootfsMib),
      },
      operations: {
        retentionDays: this.integer(
          operations,
          "operations.retention_days",
          d.operations.retentionDays,
          CONFIG_LIMITS.retentionDays,
        ),
      },
      network: {
        bridge: this.string(network, "network.bridge", d.network.bridge, (s) =>
          BRIDGE.test(s) ? undefined : `must match ${BRIDGE.source} (at most 15 bytes, banger's prefix)`,
        ),
        address: this.string(network, "network.address", d.network.address, bridgeAddressProblem),
        tapPool: this.integer(network, "network.tap_pool", d.network.tapPool, CONFIG_LIMITS.tapPool),
        publishPrivilegedPorts: this.boolean(
          network,
          "network.publish_privileged_ports",
          d.network.publishPrivilegedPorts,
        ),
      },
      firecracker: { binary: this.hostPath(firecracker, "firecracker.binary", d.firecracker.binary) },
      qemu: { binary: this.hostPath(qemu, "qemu.binary", d.qemu.binary) },
      registries: { insecure: this.registries(registries) },
      ssh: { privateKey: this.privateKey(ssh) },
      fileSync: this.fileSync(doc),
    };
  }

  private problem(key: string, reason: string): undefined {
    this.problems.push({ file: this.file, key, reason });
    return undefined;
  }

  /** Reports keys of `table` not in `allowed`, with a suggestion when one is close. */
  private unknownKeys(table: Table, prefix: string, allowed: readonly string[]): void {
    for (const key of Object.keys(table)) {
      if (allowed.includes(key)) continue;
      const near = allowed.find((a) => editDistance(a, key) <= 2);
      this.problem(`${prefix}${key}`, `unknown key${near === undefined ? "" : ` (did you mean "${near}"?)`}`);
    }
  }

  /** A sub-table of the document (empty when absent or not a table; the latter is reported). */
  private table(doc: Table, name: string): Table {
    const value = doc[name];
    if (value === undefined) return {};
    if (!isTable(value)) return this.problem(name, `must be a table ([${name}]), got ${tomlType(value)}`) ?? {};
    this.unknownKeys(value, `${name}.`, keysOf(name));
    return value;
  }

  private leaf(table: Table, key: string): unknown {
    return table[key.slice(key.lastIndexOf(".") + 1)];
  }

  private string(table: Table, key: string, fallback: string, check: (s: string) => string | undefined): string {
    const value = this.leaf(table, key);
    if (value === undefined) return fallback;
    if (typeof value !== "string") return this.problem(key, `must be a string, got ${tomlType(value)}`) ?? fallback;
    const reason = check(value);
    if (reason !== undefined) return this.problem(key, `${reason}, got ${JSON.stringify(value)}`) ?? fallback;
    return value;
  }

  private integer(table: Table, key: string, fallback: number, [min, max]: readonly [number, number]): number {
    const value = this.leaf(table, key);
    if (value === undefined) return fallback;
    if (typeof value !== "bigint") return this.problem(key, `must be an integer, got ${tomlType(value)}`) ?? fallback;
    if (value < BigInt(min) || value > BigInt(max)) {
      return this.problem(key, `must be between ${min} and ${max}, got ${value}`) ?? fallback;
    }
    return Number(value);
  }

  private boolean(table: Table, key: string, fallback: boolean): boolean {
    const value = this.leaf(table, key);
    if (value === undefined) return fallback;
    if (typeof value !== "boolean")
      return this.problem(key, `must be true or false, got ${tomlType(value)}`) ?? fallback;
    return value;
  }

  /** An absolute host path (or `~/…`), normalised. */
  private hostPath(table: Table, key: string, fallback: string): string {
    const text = this.string(table, key, fallback, (s) => hostPathProblem(s));
    return text === fallback ? fallback : expandHome(text, this.home);
  }

  private registries(table: Table): string[] {
    const key = "registries.insecure";
    const value = table["insecure"];
    if (value === undefined) return [...DEFAULT_CONFIG.registries.insecure];
    if (!Array.isArray(value)) return this.problem(key, `must be an array of strings, got ${tomlType(value)}`) ?? [];
    const hosts = new Set<string>();
    value.forEach((entry: unknown, i) => {
      if (typeof entry !== "string") return this.problem(`${key}[${i}]`, `must be a string, got ${tomlType(entry)}`);
      const reason = registryHostProblem(entry);
      if (reason !== undefined) return this.problem(`${key}[${i}]`, `${reason}, got ${JSON.stringify(entry)}`);
      hosts.add(entry.toLowerCase());
    });
    return [...hosts];
  }

  private privateKey(table: Table): string | null {
    const text = this.string(table, "ssh.private_key", "", (s) => (s === "" ? undefined : hostPathProblem(s)));
    return text === "" ? null : expandHome(text, this.home);
  }

  private fileSync(doc: Table): FileSyncEntry[] {
    const value = doc["file_sync"];
    if (value === undefined) return [];
    if (!Array.isArray(value) || !value.every(isTable)) {
      return this.problem("file_sync", `must be an array of tables ([[file_sync]]), got ${tomlType(value)}`) ?? [];
    }
    if (value.length > CONFIG_LIMITS.fileSyncEntries) {
      return this.problem("file_sync", `at most ${CONFIG_LIMITS.fileSyncEntries} entries, got ${value.length}`) ?? [];
    }
    const entries: FileSyncEntry[] = [];
    const targets = new Map<string, number>();
    value.forEach((entry: Table, i) => {
      const at = `file_sync[${i}]`;
      this.unknownKeys(entry, `${at}.`, keysOf("file_sync[]"));
      const before = this.problems.length;
      for (const required of ["source", "target"]) {
        if (entry[required] === undefined) this.problem(`${at}.${required}`, "is required");
      }
      const source = this.string(entry, `${at}.source`, "", (s) => this.syncSourceProblem(s));
      const target = this.string(entry, `${at}.target`, "", guestTargetProblem);
      const mode = this.string(entry, `${at}.mode`, "0600", (s) =>
        MODE.test(s) ? undefined : 'must be an octal mode string such as "0644" (at most 0777)',
      );
      const first = targets.get(target);
      if (target !== "" && first !== undefined) {
        this.problem(`${at}.target`, `${JSON.stringify(target)} is already the target of file_sync[${first}]`);
      }
      targets.set(target, first ?? i);
      if (this.problems.length === before) {
        entries.push({ source: expandHome(source, this.home), target, mode: parseInt(mode.replace(/^0o/, ""), 8) });
      }
    });
    return entries;
  }

  private syncSourceProblem(text: string): string | undefined {
    const pathProblem = hostPathProblem(text);
    if (pathProblem !== undefined) return pathProblem;
    const rel = relative(this.home, expandHome(text, this.home));
    if (rel === "" || rel.startsWith("..") || isAbsolute(rel)) {
      return `must be a file or directory inside the owner's home ${this.home} (file_sync reads nothing else)`;
    }
    return undefined;
  }
}

function isTable(value: unknown): value is Table {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof TomlDate);
}

function tomlType(value: unknown): string {
  if (typeof value === "bigint") return `integer ${value}`;
  if (typeof value === "number") return `float ${value}`;
  if (typeof value === "string") return `string ${JSON.stringify(value)}`;
  if (typeof value === "boolean") return `boolean ${value}`;
  if (value instanceof TomlDate) return "a date-time";
  if (Array.isArray(value)) return "an array";
  return "a table";
}

function expandHome(text: string, home: string): string {
  if (text === "~") return home;
  return normalize(text.startsWith("~/") ? join(home, text.slice(2)) : text);
}

function hostPathProblem(text: string): string | undefined {
  if (/[\u0000-\u001f\u007f]/.test(text)) return "must not contain control characters";
  if (!isAbsolute(text) && text !== "~" && !text.startsWith("~/")) return "must be an absolute path (or start with ~/)";
  return undefined;
}

function guestTargetProblem(text: string): string | undefined {
  if (!text.startsWith("/root/")) return "must be an absolute guest path below /root (the work disk)";
  if (Buffer.byteLength(text) > 4096) return "must be at most 4096 bytes";
  const names = text.slice(1).split("/");
  if (names.some((n) => n === "" || n === "." || n === "..")) {
    return 'must be normalised (no "." or ".." components, no "//", no trailing "/")';
  }
  if (names.some((n) => Buffer.byteLength(n) > 255)) return "has a component longer than 255 bytes";
  if (!names.every((n) => GUEST_NAME.test(n))) return "may contain only A-Z a-z 0-9 and . _ + @ = : , ~ - and /";
  return undefined;
}

function bridgeAddressProblem(text: string): string | undefined {
  const [lo, hi] = CONFIG_LIMITS.bridgePrefix;
  const match = /^([0-9.]+)\/(\d{1,2})$/.exec(text);
  const addressText = match?.[1];
  if (match === null || addressText === undefined || !DOTTED.test(addressText)) {
    return "must be an IPv4 address with a prefix, such as 172.30.0.1/24";
  }
  const prefix = Number(match[2]);
  if (prefix < lo || prefix > hi) return `prefix must be /${lo} to /${hi}`;
  const octets = addressText.split(".").map(Number);
  const value = octets.reduce((acc, part) => acc * 256 + part, 0);
  const first = octets[0] ?? 0;
  if (first === 0 || first === 127 || first >= 224) return "must be a unicast address (not 0/8, loopback or multicast)";
  const size = 2 ** (32 - prefix);
  const network = Math.floor(value / size) * size;
  if (value === network || value === network + size - 1) {
    return "must be a host address of the subnet (the bridge's own), not its first or last address";
  }
  return undefined;
}

function registryHostProblem(text: string): string | undefined {
  const usage = 'must be "host" or "host:port" (no scheme, path or user)';
  let host = text.toLowerCase();
  let port: string | undefined;
  const bracketed = /^\[([^\]]+)\](?::(.*))?$/.exec(host);
  if (bracketed !== null) {
    if (!isIPv6(bracketed[1] ?? "")) return usage;
    port = bracketed[2];
  } else {
    const colon = host.lastIndexOf(":");
    if (colon >= 0) [host, port] = [host.slice(0, colon), host.slice(colon + 1)];
    const hostname = host.length <= 253 && host.split(".").every((label) => HOST_LABEL.test(label));
    if (!isIPv4(host) && !hostname) return usage;
  }
  if (port !== undefined && !(/^\d{1,5}$/.test(port) && Number(port) >= 1 && Number(port) <= 65535)) {
    return `${usage}; the port must be 1-65535`;
  }
  return undefined;
}

function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      next.push(Math.min((row[j] ?? 0) + 1, (next[j - 1] ?? 0) + 1, (row[j - 1] ?? 0) + cost));
    }
    row = next;
  }
  return row[b.length] ?? 0;
}
