/**
 * The orchestrator's configuration file: `$XDG_CONFIG_HOME/banger/config.toml`,
 * else `~/.config/banger/config.toml`. Every key is optional; a missing file means
 * all defaults. Problems (TOML syntax, unknown keys at any level, wrong types, bad
 * values) are all collected and thrown together as one `ConfigError`, one line per
 * problem: `<file>: <key.path>: <reason>`.
 *
 * `CONFIG_REFERENCE` below is the single list of keys, defaults and meanings: the
 * parser admits exactly these keys, `describeConfig()` renders them, and
 * docs/CONFIG.md is checked against it by the tests.
 */
import { readFile } from "node:fs/promises";
import { isIPv4, isIPv6 } from "node:net";
import { isAbsolute, join, normalize, relative } from "node:path";
import { FailedPreconditionError } from "@banger/common";
import { TomlDate, TomlError, parse } from "smol-toml";

export type VmmDriver = "firecracker" | "qemu-microvm";
/** The `vmm` setting: a driver, or "auto" (Firecracker where KVM and its binary are, else QEMU). */
export type VmmSetting = VmmDriver | "auto";

/** One `[[file_sync]]` entry: a file of the owner's home copied onto each new VM's work disk. */
export interface FileSyncEntry {
  /** Absolute host path, strictly inside the owner's home (`~/` expanded). */
  readonly source: string;
  /** Absolute guest path strictly below `/root` (the work disk). */
  readonly target: string;
  /** Permission bits of the guest file, 0–0o777. */
  readonly mode: number;
}

/** The configuration values, fully defaulted. */
export interface ConfigValues {
  /** Image of a new VM when the request names none (a local image or a catalog name). */
  readonly defaultImage: string;
  /** Kernel of a new VM when neither the request nor the image names one; "" = the host default kernel. */
  readonly defaultKernel: string;
  /** VMM of a new VM when the request names none ("auto": chosen per host, core/host-choices.ts). */
  readonly vmm: VmmSetting;
  readonly vm: {
    readonly vcpu: number;
    readonly memoryMib: number;
    readonly workDiskMib: number;
    readonly nat: boolean;
    /** MiB of output kept per log of a VM (its console, its VMM's log): the newest file and its predecessor. */
    readonly logMaxMib: number;
  };
  readonly image: { readonly minRootfsMib: number };
  readonly network: {
    /** Host bridge name, `^bgr[a-z0-9]{1,12}$`. */
    readonly bridge: string;
    /** The bridge's own address and the guests' subnet, e.g. "172.30.0.1/24". */
    readonly address: string;
    /** Warm-pool taps kept ready for fast creates. */
    readonly tapPool: number;
  };
  readonly firecracker: { readonly binary: string };
  readonly qemu: { readonly binary: string };
  /** Registry hosts ("host" or "host:port", lower case) reached over plain HTTP. */
  readonly registries: { readonly insecure: readonly string[] };
  /** Private key for guests; null = banger's own, generated on first use (see ssh-identity.ts). */
  readonly ssh: { readonly privateKey: string | null };
  readonly fileSync: readonly FileSyncEntry[];
}

export interface BangerConfig extends ConfigValues {
  /** The file these values came from, and whether it existed (false: all defaults). */
  readonly source: { readonly path: string; readonly exists: boolean };
}

/** The documented defaults, in one place. */
export const DEFAULT_CONFIG: ConfigValues = deepFreeze({
  defaultImage: "debian",
  defaultKernel: "",
  vmm: "auto",
  vm: { vcpu: 2, memoryMib: 1024, workDiskMib: 8192, nat: false, logMaxMib: 8 },
  image: { minRootfsMib: 2048 },
  network: { bridge: "bgr0", address: "172.30.0.1/24", tapPool: 4 },
  firecracker: { binary: "/usr/local/bin/firecracker" },
  qemu: { binary: "/usr/bin/qemu-system-x86_64" },
  registries: { insecure: [] },
  ssh: { privateKey: null },
  fileSync: [],
});

/** Limits the values are checked against. */
export const CONFIG_LIMITS = {
  vcpu: [1, 32],
  memoryMib: [128, 262_144],
  workDiskMib: [64, 16 * 1024 * 1024],
  logMaxMib: [1, 1024],
  minRootfsMib: [64, 1024 * 1024],
  tapPool: [0, 64],
  bridgePrefix: [16, 30],
  fileSyncEntries: 64,
} as const;

export interface ConfigKeyDoc {
  /** Dotted key path; `file_sync[].x` for the entries of the `[[file_sync]]` array. */
  readonly key: string;
  /** The default as it would be written in TOML ("" for none). */
  readonly default: string;
  readonly meaning: string;
}

/** Every key the file may hold, its default and meaning. The parser admits exactly these. */
export const CONFIG_REFERENCE: readonly ConfigKeyDoc[] = deepFreeze([
  {
    key: "default_image",
    default: '"debian"',
    meaning:
      "image of `vm create` without --image: a local image, a catalog name (pulled on first use) or tiny (built in); " +
      "the built-in tiny stands in when its registry is unreachable",
  },
  {
    key: "default_kernel",
    default: '""',
    meaning: 'kernel when neither the request nor the image names one; "" = the host default kernel',
  },
  { key: "vmm", default: '"firecracker"', meaning: 'VMM of new VMs: "firecracker" or "qemu-microvm"' },
  { key: "vm.vcpu", default: "2", meaning: "virtual CPUs of a new VM, 1-32" },
  { key: "vm.memory_mib", default: "1024", meaning: "memory of a new VM in MiB, 128-262144" },
  {
    key: "vm.work_disk_mib",
    default: "8192",
    meaning: "size of a new VM's work disk (mounted at /root) in MiB, 64-16777216; sparse",
  },
  {
    key: "vm.log_max_mib",
    default: "8",
    meaning: "MiB kept of each VM log (console, VMM log) in the runtime directory, newest first, 1-1024",
  },
  {
    key: "vm.nat",
    default: "false",
    meaning: "give every new VM NAT to the outside network (otherwise only when asked)",
  },
  {
    key: "image.min_rootfs_mib",
    default: "2048",
    meaning: "minimum root filesystem size of pulled images in MiB, 64-1048576; sparse",
  },
  { key: "network.bridge", default: '"bgr0"', meaning: "host bridge VMs attach to, `^bgr[a-z0-9]{1,12}$`" },
  {
    key: "network.address",
    default: '"172.30.0.1/24"',
    meaning: "the bridge's address and the guests' subnet: IPv4 CIDR, prefix /16-/30, a host address",
  },
  { key: "network.tap_pool", default: "4", meaning: "warm-pool taps kept ready for fast creates, 0-64" },
  {
    key: "firecracker.binary",
    default: '"/usr/local/bin/firecracker"',
    meaning: "Firecracker executable (>= 1.8), absolute path",
  },
  {
    key: "qemu.binary",
    default: '"/usr/bin/qemu-system-x86_64"',
    meaning: "QEMU executable of the qemu-microvm driver, absolute path",
  },
  {
    key: "registries.insecure",
    default: "[]",
    meaning: 'registries reached over plain HTTP, "host" (any port) or "host:port"; loopback ones always are',
  },
  {
    key: "ssh.private_key",
    default: '""',
    meaning:
      'private key banger logs in to guests with (unencrypted ed25519, OpenSSH format, mode 0600); "" = banger\'s own, generated on first use',
  },
  {
    key: "file_sync[].source",
    default: "",
    meaning: "required: a file inside the owner's home (absolute or ~/…) copied to every new VM",
  },
  { key: "file_sync[].target", default: "", meaning: "required: its absolute guest path, below /root" },
  { key: "file_sync[].mode", default: '"0600"', meaning: 'permission bits of the guest file, octal string ("0644")' },
]);

/** The reference as plain text, one key per line: `key = default  # meaning`. */
export function describeConfig(): string {
  return CONFIG_REFERENCE.map((doc) => `${doc.key} = ${doc.default || "(required)"}  # ${doc.meaning}`).join("\n");
}

/** One problem found in the file. */
export interface ConfigProblem {
  readonly file: string;
  /** Dotted key path (`vm.vcpu`, `file_sync[1].target`), or `line L, column C` for syntax errors. */
  readonly key: string;
  readonly reason: string;
}

/** Every problem of a config file at once; reason INVALID_CONFIG. */
export class ConfigError extends FailedPreconditionError {
  readonly problems: readonly ConfigProblem[];
  constructor(problems: readonly ConfigProblem[], options: { cause?: unknown } = {}) {
    const lines = problems.map((p) => `${p.file}: ${p.key}: ${p.reason}`);
    const count = problems.length === 1 ? "1 problem" : `${problems.length} problems`;
    super(`invalid configuration (${count}):\n${lines.join("\n")}`, { reason: "INVALID_CONFIG", ...options });
    this.problems = problems;
  }
}

/** `$XDG_CONFIG_HOME/banger` (when set to an absolute path, as XDG requires), else `<home>/.config/banger`. */
export function defaultConfigDir(env: Readonly<Record<string, string | undefined>>, home: string): string {
  const xdg = env["XDG_CONFIG_HOME"];
  return join(xdg !== undefined && isAbsolute(xdg) ? xdg : join(home, ".config"), "banger");
}

/** `<config dir>/config.toml`; see defaultConfigDir. */
export function defaultConfigPath(env: Readonly<Record<string, string | undefined>>, home: string): string {
  return join(defaultConfigDir(env, home), "config.toml");
}

const MAX_FILE_BYTES = 1024 * 1024;

/**
 * Reads, checks and defaults the config file at `path`. `home` is the owner's home
 * (`~/` in paths; file_sync sources must be inside it). A missing file = defaults.
 * Throws ConfigError listing every problem.
 */
export async function loadConfig(options: { readonly path: string; readonly home: string }): Promise<BangerConfig> {
  const { path } = options;
  let text: string;
  try {
    const bytes = await readFile(path);
    if (bytes.length > MAX_FILE_BYTES) {
      throw new ConfigError([{ file: path, key: "(file)", reason: `larger than ${MAX_FILE_BYTES} bytes` }]);
    }
    text = bytes.toString("utf8");
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      return deepFreeze({ ...DEFAULT_CONFIG, source: { path, exists: false } });
    }
    const reason = `cannot be read: ${(error as Error).message}`;
    throw new ConfigError([{ file: path, key: "(file)", reason }], { cause: error });
  }
  return deepFreeze({ ...parseConfig(text, path, options.home), source: { path, exists: true } });
}

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

// ---------------------------------------------------------------------------

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
      network: {
        bridge: this.string(network, "network.bridge", d.network.bridge, (s) =>
          BRIDGE.test(s) ? undefined : `must match ${BRIDGE.source} (at most 15 bytes, banger's prefix)`,
        ),
        address: this.string(network, "network.address", d.network.address, bridgeAddressProblem),
        tapPool: this.integer(network, "network.tap_pool", d.network.tapPool, CONFIG_LIMITS.tapPool),
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
      return `must be a file inside the owner's home ${this.home} (file_sync reads nothing else)`;
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

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}
