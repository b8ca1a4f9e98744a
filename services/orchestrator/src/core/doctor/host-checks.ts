/** The host checks: the helper's host features, the bridge's subnet, the SSH key, free space. */
import type { DoctorCheck } from "../capabilities.js";
import type { HostAddress, HostFeatures, SshKeyState } from "../ports.js";
import { parseBridgeAddress } from "../vm-addresses.js";
import { HELPER_DOWN, check, type Settled } from "./settle.js";

const GIB = 1024 ** 3;
const SPACE_FAIL_BYTES = 1 * GIB;
const SPACE_WARN_BYTES = 5 * GIB;

export function featureChecks(features: HostFeatures | undefined): DoctorCheck[] {
  const each: [string, keyof HostFeatures, DoctorCheck, DoctorCheck][] = [
    [
      "tun",
      "tun",
      check("tun", "ok", "/dev/net/tun is present"),
      check("tun", "fail", "no /dev/net/tun: VMs cannot get a network interface", "sudo modprobe tun"),
    ],
    [
      "kernel-bridge",
      "bridge",
      check("kernel-bridge", "ok", "the kernel can make bridges"),
      check("kernel-bridge", "fail", "the kernel cannot make bridges (no bridge module)", "sudo modprobe bridge"),
    ],
    [
      "loop",
      "loop",
      check("loop", "ok", "/dev/loop-control is present"),
      check("loop", "fail", "no /dev/loop-control: root disks cannot be checked or patched", "sudo modprobe loop"),
    ],
    [
      "device-mapper",
      "deviceMapper",
      check(
        "device-mapper",
        "ok",
        "the kernel's device-mapper driver answers: root disks are dm-snapshots of the image",
      ),
      check(
        "device-mapper",
        "warn",
        "no /dev/mapper/control: root disks are full copies of the image (clone; reflinked where the file system can)",
        "sudo modprobe dm_snapshot, for copy-on-write root disks",
      ),
    ],
  ];
  return each.map(([name, key, ok, lacking]) => {
    if (features === undefined) return check(name, "warn", HELPER_DOWN);
    if (features[key]) return ok;
    if (key === "bridge" && features.modulesVisible === false) {
      // The helper's unit hides /lib/modules (ProtectKernelModules=yes): an installed module cannot be seen.
      return check(
        name,
        "warn",
        "no bridge module is loaded, and the helper cannot see the installed ones: the first VM loads it if the kernel has it",
        "sudo modprobe bridge, to be sure now",
      );
    }
    if (key === "deviceMapper" && features.deviceMapperDetail) {
      // Say why: a node without its driver (containers, libdevmapper) is not device-mapper.
      return { ...lacking, detail: lacking.detail.replace("no /dev/mapper/control", features.deviceMapperDetail) };
    }
    return lacking;
  });
}

function ipv4ToNumber(ip: string): number {
  return ip.split(".").reduce((acc, part) => acc * 256 + Number(part), 0);
}

/** [first, last] address numbers of the subnet `cidr` ("10.0.0.5/16") lies in. */
function subnetRange(cidr: string): [number, number] | undefined {
  const match = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(cidr);
  if (!match?.[1] || match[2] === undefined) return undefined;
  const size = 2 ** (32 - Number(match[2]));
  const first = Math.floor(ipv4ToNumber(match[1]) / size) * size;
  return [first, first + size - 1];
}

export function bridgeCheck(
  found: Settled<readonly HostAddress[]>,
  network: { readonly bridge: string; readonly address: string },
  configPath: string,
): DoctorCheck {
  const { bridge, address } = network;
  if (!found.ok) return check("bridge", "warn", `could not list the host's addresses: ${found.error.message}`);
  const parsed = parseBridgeAddress(address);
  const wanted = `${parsed.address}/${parsed.prefixLength}`;
  const own = found.value.filter((a) => a.interface === bridge).map((a) => a.cidr);
  if (own.includes(wanted)) return check("bridge", "ok", `${bridge} is up with ${wanted}`);
  if (own.length > 0) {
    return check(
      "bridge",
      "warn",
      `${bridge} has ${own.join(", ")}, not ${wanted} (network.address)`,
      `set network.address in ${configPath} to its address, or delete it (sudo ip link del ${bridge}) while no VM runs`,
    );
  }
  const ours = subnetRange(wanted);
  const clash = found.value.find((a) => {
    const theirs = subnetRange(a.cidr);
    return a.interface !== bridge && ours && theirs && ours[0] <= theirs[1] && theirs[0] <= ours[1];
  });
  if (clash) {
    return check(
      "bridge",
      "fail",
      `${wanted} (network.address) overlaps ${clash.interface}'s ${clash.cidr}: guests would be unreachable`,
      `choose a subnet no other interface uses for network.address in ${configPath}`,
    );
  }
  return check("bridge", "ok", `${bridge} (${wanted}) is made when the first VM starts`);
}

export function sshKeyCheck(found: Settled<SshKeyState>, configPath: string): DoctorCheck {
  if (!found.ok) return check("ssh-key", "warn", `could not read the SSH key: ${found.error.message}`);
  const key = found.value;
  const whose = key.managed ? "banger's own key" : "ssh.private_key";
  switch (key.kind) {
    case "ok":
      return check("ssh-key", "ok", `${whose} ${key.path} (${key.fingerprint})`);
    case "missing":
      return key.managed
        ? check("ssh-key", "ok", `not made yet: banger makes ${key.path} when the first VM is created`)
        : check(
            "ssh-key",
            "fail",
            `${whose} ${key.path} does not exist`,
            `point ssh.private_key in ${configPath} at an ed25519 key (ssh-keygen -t ed25519 -N ''), or remove it to use banger's own`,
          );
    case "unusable":
      return check(
        "ssh-key",
        "fail",
        key.message,
        key.managed
          ? `fix ${key.path} as said (VMs already made trust this key)`
          : `fix it as said, or point ssh.private_key in ${configPath} at another key`,
      );
  }
}

function formatBytes(bytes: number): string {
  return bytes >= GIB ? `${(bytes / GIB).toFixed(1)} GiB` : `${Math.floor(bytes / 1024 ** 2)} MiB`;
}

export function spaceCheck(found: Settled<{ freeBytes: number; totalBytes: number }>, stateDir: string): DoctorCheck {
  if (!found.ok) return check("state-dir-space", "warn", `could not measure ${stateDir}: ${found.error.message}`);
  const { freeBytes, totalBytes } = found.value;
  const detail = `${formatBytes(freeBytes)} free of ${formatBytes(totalBytes)} in ${stateDir}`;
  const hint = "free space there, or delete images and VMs you no longer need (banger image delete, banger vm delete)";
  if (freeBytes < SPACE_FAIL_BYTES)
    return check("state-dir-space", "fail", `only ${detail}: images cannot be pulled`, hint);
  if (freeBytes < SPACE_WARN_BYTES)
    return check("state-dir-space", "warn", `only ${detail}: an image or a few VMs fill it`, hint);
  return check("state-dir-space", "ok", detail);
}
