import { accessSync, closeSync, constants, existsSync, openSync, readFileSync, readdirSync } from "node:fs";
import { release } from "node:os";
import { delimiter, join } from "node:path";
import koffi from "koffi";

/** Which host features the helper's operations can rely on (plain file checks; nothing is changed). */
export interface HostFeatures {
  readonly tun: boolean;
  readonly bridge: boolean;
  readonly nftables: boolean;
  readonly loop: boolean;
  /** The kernel's device-mapper driver answers (not only a /dev/mapper/control node: see deviceMapperStatus). */
  readonly deviceMapper: boolean;
  /** Why device-mapper is not usable ("" when it is). */
  readonly deviceMapperDetail: string;
  readonly resolved: boolean;
  /** /dev/kvm opens and answers KVM's API version (see kvmStatus). */
  readonly kvm: boolean;
  /** Why KVM is not usable ("" when it is). */
  readonly kvmDetail: string;
  readonly kernelRelease: string;
  /** net.ipv4.ip_forward here; undefined when unreadable. */
  readonly ipForward: boolean | undefined;
  /** Whether /lib/modules/<release> is visible (not under the unit's ProtectKernelModules=yes). */
  readonly modulesVisible: boolean;
}

export function probeHostFeatures(): HostFeatures {
  const modules = `/lib/modules/${release()}`;
  const dm = deviceMapperStatus();
  const kvm = kvmStatus();
  return {
    tun: existsSync("/dev/net/tun"),
    // A bridge already there proves it; else the module loaded or built in (/sys/module), else
    // installed (`ip link add type bridge` loads it on demand; invisible under the unit).
    bridge: anyBridge() || existsSync("/sys/module/bridge") || existsSync(`${modules}/kernel/net/bridge`),
    nftables: onPath("nft") && (existsSync("/sys/module/nf_tables") || existsSync("/proc/net/netfilter")),
    loop: existsSync("/dev/loop-control"),
    deviceMapper: dm.usable,
    deviceMapperDetail: dm.why,
    resolved: existsSync("/run/systemd/resolve/io.systemd.Resolve"),
    kvm: kvm.usable,
    kvmDetail: kvm.why,
    kernelRelease: release(),
    ipForward: ipForward(),
    modulesVisible: existsSync(`${modules}/modules.dep`) || existsSync(`${modules}/modules.builtin`),
  };
}

/** Whether a host feature works, and why not when it does not. */
export interface FeatureStatus {
  readonly usable: boolean;
  readonly why: string;
}

/**
 * device-mapper by its driver, not by its node: libdevmapper (and containers) make
 * /dev/mapper/control on kernels without the driver, where every dmsetup then fails with
 * "No such device". The driver registers the misc device `device-mapper` (/proc/misc).
 */
export function deviceMapperStatus(roots: { dev?: string; proc?: string } = {}): FeatureStatus {
  const dev = roots.dev ?? "/dev";
  const proc = roots.proc ?? "/proc";
  if (!existsSync(`${dev}/mapper/control`)) return { usable: false, why: "no /dev/mapper/control" };
  let misc = "";
  try {
    misc = readFileSync(`${proc}/misc`, "utf8");
  } catch {
    return { usable: false, why: "/dev/mapper/control exists but /proc/misc cannot be read to find its driver" };
  }
  if (!/^\s*\d+ device-mapper$/m.test(misc)) {
    return { usable: false, why: "/dev/mapper/control exists but the kernel has no device-mapper driver" };
  }
  return { usable: true, why: "" };
}

/** KVM_GET_API_VERSION (_IO(0xAE, 0x00)); every KVM since Linux 2.6.22 answers 12. */
const KVM_GET_API_VERSION = 0xae00;
const KVM_API_VERSION = 12;
type Ioctl = (fd: number, request: number, arg: number) => number;
let ioctl: Ioctl | undefined;

/**
 * KVM by asking it, not by its node: /dev/kvm can exist without a driver (a copied /dev, a
 * container), and then opening it fails with ENODEV or ENXIO. Opened read-write (what a VMM
 * needs) and asked its API version.
 */
export function kvmStatus(dev = "/dev"): FeatureStatus {
  const path = `${dev}/kvm`;
  if (!existsSync(path)) return { usable: false, why: "/dev/kvm absent" };
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDWR); // close-on-exec, as libuv opens everything
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "error";
    const noDriver = code === "ENODEV" || code === "ENXIO";
    return { usable: false, why: `/dev/kvm exists but cannot be opened (${code})${noDriver ? ": no KVM driver" : ""}` };
  }
  try {
    ioctl ??= koffi.load("libc.so.6").func("int ioctl(int fd, unsigned long request, long arg)") as unknown as Ioctl;
    const version = ioctl(fd, KVM_GET_API_VERSION, 0);
    if (version !== KVM_API_VERSION) {
      return { usable: false, why: `/dev/kvm answers API version ${version}, not ${KVM_API_VERSION}` };
    }
    return { usable: true, why: "" };
  } finally {
    closeSync(fd);
  }
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

function canAccess(path: string, mode: number): boolean {
  try {
    accessSync(path, mode);
    return true;
  } catch {
    return false;
  }
}
