import { accessSync, constants, existsSync } from "node:fs";
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
}

export function probeHostFeatures(): HostFeatures {
  return {
    tun: existsSync("/dev/net/tun"),
    // The bridge module is loaded or built in once /sys/class/net can hold bridges; the
    // module directory is the common sign, and `ip link add type bridge` loads it on demand.
    bridge: existsSync("/sys/module/bridge") || existsSync(`/lib/modules/${release()}/kernel/net/bridge`),
    nftables: onPath("nft") && (existsSync("/sys/module/nf_tables") || existsSync("/proc/net/netfilter")),
    loop: existsSync("/dev/loop-control"),
    deviceMapper: existsSync("/dev/mapper/control"),
    resolved: existsSync("/run/systemd/resolve/io.systemd.Resolve"),
    kvm: canOpen("/dev/kvm"),
    kernelRelease: release(),
  };
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
