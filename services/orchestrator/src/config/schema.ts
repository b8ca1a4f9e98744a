/**
 * The configuration's shape: its types, its documented defaults, the limits values are
 * checked against, `CONFIG_REFERENCE` (the single list of keys, defaults and meanings:
 * the parser admits exactly these keys, `describeConfig()` renders them, and
 * docs/CONFIG.md is checked against it by the tests) and `ConfigError`.
 */
import { FailedPreconditionError } from "@banger/common";

export type VmmDriver = "firecracker" | "qemu-microvm";
/** The `vmm` setting: a driver, or "auto" (Firecracker where KVM and its binary are, else QEMU). */
export type VmmSetting = VmmDriver | "auto";

/** One `[[file_sync]]` entry: a file or directory of the owner's home copied onto each VM's work disk (create, each start). */
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
  /** Days an ended operation is kept; older ones are pruned at start, daily, and by `banger prune`. */
  readonly operations: { readonly retentionDays: number };
  readonly network: {
    /** Host bridge name, `^bgr[a-z0-9]{1,12}$`. */
    readonly bridge: string;
    /** The bridge's own address and the guests' subnet, e.g. "172.30.0.1/24". */
    readonly address: string;
    /** Warm-pool taps kept ready for fast creates. */
    readonly tapPool: number;
    /** Whether VMs may publish host ports below 1024 (bangerd then needs CAP_NET_BIND_SERVICE). */
    readonly publishPrivilegedPorts: boolean;
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
  operations: { retentionDays: 30 },
  network: { bridge: "bgr0", address: "172.30.0.1/24", tapPool: 4, publishPrivilegedPorts: false },
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
  retentionDays: [1, 3650],
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
  {
    key: "vmm",
    default: '"auto"',
    meaning:
      'VMM of new VMs: "firecracker", "qemu-microvm" or "auto" (Firecracker where KVM and its binary are, else QEMU)',
  },
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
  {
    key: "operations.retention_days",
    default: "30",
    meaning: "days an ended operation is kept, 1-3650; older ones are pruned at start, daily and by `banger prune`",
  },
  { key: "network.bridge", default: '"bgr0"', meaning: "host bridge VMs attach to, `^bgr[a-z0-9]{1,12}$`" },
  {
    key: "network.address",
    default: '"172.30.0.1/24"',
    meaning: "the bridge's address and the guests' subnet: IPv4 CIDR, prefix /16-/30, a host address",
  },
  { key: "network.tap_pool", default: "4", meaning: "warm-pool taps kept ready for fast creates, 0-64" },
  {
    key: "network.publish_privileged_ports",
    default: "false",
    meaning:
      "let `vm create -p`/`vm port add` publish host ports below 1024 (bangerd must then hold CAP_NET_BIND_SERVICE)",
  },
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
    meaning:
      "required: a file or directory (copied recursively, modes kept, symlinks left out) inside the owner's home " +
      "(absolute or ~/…), copied onto each VM's work disk at create and again at each start",
  },
  { key: "file_sync[].target", default: "", meaning: "required: its absolute guest path, below /root" },
  {
    key: "file_sync[].mode",
    default: '"0600"',
    meaning: 'permission bits of the guest file, octal string ("0644"); a directory\'s files keep their own',
  },
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

/** Freezes `value` and everything reachable from it; returns it. */
export function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}
