import { accessSync, closeSync, constants, existsSync, fstatSync, openSync, readFileSync, readdirSync } from "node:fs";
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
  /** A hardware KVM driver answers on /dev/kvm and the VMM, as the owner, may open it (see kvmStatus). */
  readonly kvm: boolean;
  /** Why KVM is not usable ("" when it is). */
  readonly kvmDetail: string;
  readonly kernelRelease: string;
  /** net.ipv4.ip_forward here; undefined when unreadable. */
  readonly ipForward: boolean | undefined;
  /** Whether /lib/modules/<release> is visible (not under the unit's ProtectKernelModules=yes). */
  readonly modulesVisible: boolean;
}

/** `vmmUser`: who the helper runs a VMM as (the owner, without supplementary groups). */
export function probeHostFeatures(vmmUser?: VmmUser): HostFeatures {
  const modules = `/lib/modules/${release()}`;
  const dm = deviceMapperStatus();
  const kvm = kvmStatus({ vmmUser });
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

/** The uid and gid a VMM runs as: the helper starts it with no supplementary groups. */
export interface VmmUser {
  readonly uid: number;
  readonly gid: number;
}

/**
 * KVM by asking it, not by its node, and for the VMM that will use it:
 * - /dev/kvm can exist without a driver (a copied /dev, a container): opening it fails with ENODEV or ENXIO;
 * - the driver can be one that runs no stock guest kernel: kvm_pvm (KVM without hardware virtualization)
 *   answers every ioctl but boots only PVM guest kernels (a Debian kernel reboots for ever). On x86 the
 *   hardware drivers are kvm_intel and kvm_amd, listed in /sys/module whether built in or loaded;
 * - the VMM runs as the owner without supplementary groups: /dev/kvm must be open to that uid or gid
 *   itself (the usual root:kvm 0660 is not, even for an owner in group kvm).
 * Opened read-write (what a VMM needs) and asked its API version.
 */
export function kvmStatus(roots: { dev?: string; sys?: string; vmmUser?: VmmUser | undefined } = {}): FeatureStatus {
  const path = `${roots.dev ?? "/dev"}/kvm`;
  const sys = roots.sys ?? "/sys";
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
    if (process.arch === "x64" && !existsSync(`${sys}/module/kvm_intel`) && !existsSync(`${sys}/module/kvm_amd`)) {
      const pvm = existsSync(`${sys}/module/kvm_pvm`);
      return {
        usable: false,
        why: pvm
          ? "/dev/kvm is kvm_pvm's (KVM without hardware virtualization), which boots only PVM guest kernels"
          : "/dev/kvm answers but no hardware KVM driver (kvm_intel or kvm_amd) is loaded",
      };
    }
    const user = roots.vmmUser;
    if (user && user.uid !== 0) {
      const { uid, gid, mode } = fstatSync(fd);
      const open = (shift: number) => ((mode >> shift) & 0o6) === 0o6;
      if (!((uid === user.uid && open(6)) || (gid === user.gid && open(3)) || open(0))) {
        const octalMode = (mode & 0o777).toString(8).padStart(4, "0");
        return {
          usable: false,
          why:
            `/dev/kvm (uid ${uid}, gid ${gid}, mode ${octalMode}) is not open to the VMM, which runs as uid ${user.uid} ` +
            `gid ${user.gid} without supplementary groups (group kvm does not count)`,
        };
      }
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
