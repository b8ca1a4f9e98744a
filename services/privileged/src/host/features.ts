import { accessSync, constants, existsSync, readFileSync, readdirSync } from "node:fs";
import { release } from "node:os";
import { delimiter, join } from "node:path";

/** Which host features the helper's operations can rely on (plain file checks; nothing is changed). */
export interface HostFeatures {
  readonly tun: boolean;
  readonly bridge: boolean;
  readonly nftables: boolean;
  readonly loop: boolean;
  readonly deviceMapper: boolean;
  readonly resolved: boolean;
  readonly kvm: boolean;
  readonly kernelRelease: string;
  /** net.ipv4.ip_forward here; undefined when unreadable. */
  readonly ipForward: boolean | undefined;
  /** Whether /lib/modules/<release> is visible (not under the unit's ProtectKernelModules=yes). */
  readonly modulesVisible: boolean;
}

export function probeHostFeatures(): HostFeatures {
  const modules = `/lib/modules/${release()}`;
  return {
    tun: existsSync("/dev/net/tun"),
    // A bridge already there proves it; else the module loaded or built in (/sys/module), else
    // installed (`ip link add type bridge` loads it on demand; invisible under the unit).
    bridge: anyBridge() || existsSync("/sys/module/bridge") || existsSync(`${modules}/kernel/net/bridge`),
    nftables: onPath("nft") && (existsSync("/sys/module/nf_tables") || existsSync("/proc/net/netfilter")),
    loop: existsSync("/dev/loop-control"),
    deviceMapper: existsSync("/dev/mapper/control"),
    resolved: existsSync("/run/systemd/resolve/io.systemd.Resolve"),
    kvm: canOpen("/dev/kvm"),
    kernelRelease: release(),
    ipForward: ipForward(),
    modulesVisible: existsSync(`${modules}/modules.dep`) || existsSync(`${modules}/modules.builtin`),
  };
}

function anyBridge(): boolean {
  try {
    return readdirSync("/sys/class/net").some((link) => existsSync(`/sys/class/net/${link}/bridge`));
  } catch {
    return false;
  }
}

function ipForward(): boolean | undefined {
  try {
    return readFileSync("/proc/sys/net/ipv4/ip_forward", "utf8").trim() === "1";
  } catch {
    return undefined;
  }
}

function onPath(binary: string): boolean {
  return (process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin")
    .split(delimiter)
    .some((dir) => canAccess(join(dir, binary), constants.X_OK));
}

function canOpen(path: string): boolean {
  return canAccess(path, constants.R_OK | constants.W_OK);
}

function canAccess(path: string, mode: number): boolean {
  try {
    accessSync(path, mode);
    return true;
  } catch {
    return false;
  }
}
