import { readFileSync } from "node:fs";

/** Linux capability names by bit number (capability.h), for reporting what a process holds. */
const CAPABILITY_NAMES = [
  "CAP_CHOWN",
  "CAP_DAC_OVERRIDE",
  "CAP_DAC_READ_SEARCH",
  "CAP_FOWNER",
  "CAP_FSETID",
  "CAP_KILL",
  "CAP_SETGID",
  "CAP_SETUID",
  "CAP_SETPCAP",
  "CAP_LINUX_IMMUTABLE",
  "CAP_NET_BIND_SERVICE",
  "CAP_NET_BROADCAST",
  "CAP_NET_ADMIN",
  "CAP_NET_RAW",
  "CAP_IPC_LOCK",
  "CAP_IPC_OWNER",
  "CAP_SYS_MODULE",
  "CAP_SYS_RAWIO",
  "CAP_SYS_CHROOT",
  "CAP_SYS_PTRACE",
  "CAP_SYS_PACCT",
  "CAP_SYS_ADMIN",
  "CAP_SYS_BOOT",
  "CAP_SYS_NICE",
  "CAP_SYS_RESOURCE",
  "CAP_SYS_TIME",
  "CAP_SYS_TTY_CONFIG",
  "CAP_MKNOD",
  "CAP_LEASE",
  "CAP_AUDIT_WRITE",
  "CAP_AUDIT_CONTROL",
  "CAP_SETFCAP",
  "CAP_MAC_OVERRIDE",
  "CAP_MAC_ADMIN",
  "CAP_SYSLOG",
  "CAP_WAKE_ALARM",
  "CAP_BLOCK_SUSPEND",
  "CAP_AUDIT_READ",
  "CAP_PERFMON",
  "CAP_BPF",
  "CAP_CHECKPOINT_RESTORE",
] as const;

/** Names of the capabilities in a `/proc/<pid>/status` hex mask such as `CapEff:`. */
export function capabilitiesFromMask(hexMask: string): string[] {
  const mask = BigInt(`0x${hexMask}`);
  return CAPABILITY_NAMES.filter((_, bit) => (mask >> BigInt(bit)) & 1n);
}

/** Whether process `pid` exists (EPERM: it does, as another user). */
export function processIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** The effective capabilities of this process. */
export function effectiveCapabilities(statusPath = "/proc/self/status"): string[] {
  const line = readFileSync(statusPath, "utf8")
    .split("\n")
    .find((l) => l.startsWith("CapEff:"));
  return line === undefined ? [] : capabilitiesFromMask(line.slice("CapEff:".length).trim());
}

/** What a banger service says about itself in status: who it runs as and with which privileges. */
export interface ServiceIdentity {
  readonly version: string;
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
  /** Whether it runs with exactly the privileges it needs. */
  readonly privilegesOk: boolean;
  readonly privilegesDetail: string;
}
