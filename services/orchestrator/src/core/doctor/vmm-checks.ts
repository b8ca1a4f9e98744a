/** The VMM checks: /dev/kvm, the VMM binary and its version, and the binary the helper launches. */
import type { BangerConfig, VmmDriver } from "../../config/index.js";
import type { CheckStatus, DoctorCheck } from "../capabilities.js";
import type { KvmAccess, VersionOutput } from "../ports.js";
import { compareVersions } from "../kernels.js";
import { check, type Settled } from "./settle.js";

const MIN_FIRECRACKER = "1.8.0";
/** Forks load a snapshot with their own tap and vsock socket: `network_overrides` came in Firecracker 1.12. */
const MIN_FIRECRACKER_FORKS = "1.12.0";

/** "Firecracker v1.9.1" → "1.9.1"; "QEMU emulator version 7.2.5 (Debian …)" → "7.2.5"; undefined when absent. */
export function parseVmmVersion(vmm: VmmDriver, text: string): string | undefined {
  const pattern =
    vmm === "firecracker" ? /\bFirecracker v(\d+\.\d+\.\d+)\b/ : /\bQEMU emulator version (\d+\.\d+(?:\.\d+)?)/;
  return pattern.exec(text)?.[1];
}

/** Whether a Firecracker release is one banger drives (>= 1.8). */
export function firecrackerSupported(version: string): boolean {
  return compareVersions(version, MIN_FIRECRACKER) >= 0;
}

/** The binary bangerd's configuration names for `vmm` (doctor runs its --version). */
export function configuredBinary(config: Pick<BangerConfig, "firecracker" | "qemu">, vmm: VmmDriver): string {
  return vmm === "firecracker" ? config.firecracker.binary : config.qemu.binary;
}

/** What lets the owner's VMMs open /dev/kvm: they run without supplementary groups, so group kvm is not enough. */
const KVM_MODE_HINT =
  'open /dev/kvm to all (a udev rule: KERNEL=="kvm", MODE="0666", then sudo udevadm trigger /dev/kvm): the helper ' +
  "starts VMMs as the owner without supplementary groups, so membership of group kvm does not reach them";

/**
 * `helper`: the helper's own verdict (host features), which decides what VMMs get: a driver, its kind
 * and the owner's access checked by the helper that launches them. Without it, bangerd's own open.
 */
export function kvmCheck(
  kvm: Settled<KvmAccess>,
  vmm: VmmDriver,
  helper?: { readonly kvm: boolean; readonly kvmDetail?: string | undefined },
): DoctorCheck {
  // Firecracker needs KVM; QEMU falls back to TCG (slow, but it works).
  const lacking: CheckStatus = vmm === "firecracker" ? "fail" : "warn";
  const fallback = vmm === "firecracker" ? "Firecracker cannot run" : "QEMU falls back to TCG (much slower)";
  const hardware =
    "enable virtualization (VT-x/AMD-V) in the firmware and load kvm_intel or kvm_amd; inside a VM, enable nested virtualization";
  if (helper && helper.kvm) return check("kvm", "ok", "the helper's VMMs, run as the owner, can use /dev/kvm");
  const why = helper?.kvmDetail ?? "";
  if (why !== "" && why !== "/dev/kvm absent") {
    return check("kvm", lacking, `${why}: ${fallback}`, why.includes("not open to the VMM") ? KVM_MODE_HINT : hardware);
  }
  if (!kvm.ok) return check("kvm", lacking, `could not check /dev/kvm: ${kvm.error.message}`);
  const access = kvm.value;
  if (access.ok) return check("kvm", "ok", "bangerd (and so the VMM) can open /dev/kvm read-write");
  if (access.code === "ENOENT") return check("kvm", lacking, `/dev/kvm does not exist: ${fallback}`, hardware);
  if (access.code === "EACCES" || access.code === "EPERM") {
    return check("kvm", lacking, `bangerd's user cannot open /dev/kvm read-write: ${fallback}`, KVM_MODE_HINT);
  }
  return check("kvm", lacking, `cannot open /dev/kvm (${access.code}): ${fallback}`, "check /dev/kvm's permissions");
}

export function vmmVersionCheck(
  found: Settled<VersionOutput>,
  vmm: VmmDriver,
  binary: string,
  configPath: string,
): DoctorCheck {
  const label = vmm === "firecracker" ? "Firecracker" : "QEMU";
  const key = vmm === "firecracker" ? "firecracker.binary" : "qemu.binary";
  const install =
    vmm === "firecracker"
      ? `install Firecracker >= 1.8 (github.com/firecracker-microvm/firecracker/releases) as ${binary}, or set ${key} in ${configPath}`
      : `install QEMU (e.g. sudo apt-get install qemu-system-x86) as ${binary}, or set ${key} in ${configPath}`;
  const fail = (detail: string, hint = install) => check("vmm-version", "fail", detail, hint);
  if (!found.ok) return fail(`${binary} --version: ${found.error.message}`);
  const output = found.value;
  switch (output.kind) {
    case "missing":
      return fail(`no ${label} at ${binary}`);
    case "not-executable":
      return fail(
        `${binary} is not executable by bangerd's user`,
        `make it executable (chmod 755 ${binary}), or ${install}`,
      );
    case "failed":
      return fail(`${binary} --version failed: ${output.message}`);
    case "output": {
      const version = parseVmmVersion(vmm, output.text);
      if (version === undefined) {
        const said = output.text.trim().split("\n")[0] ?? "";
        return fail(`${binary} --version printed no ${label} version${said ? ` ("${said.slice(0, 80)}")` : ""}`);
      }
      if (vmm === "firecracker" && !firecrackerSupported(version)) {
        return fail(`${label} ${version} at ${binary} is older than 1.8`);
      }
      if (vmm === "firecracker" && compareVersions(version, MIN_FIRECRACKER_FORKS) < 0) {
        return check(
          "vmm-version",
          "warn",
          `${label} ${version} at ${binary}: VMs run, but forks (vm create --from) need 1.12 (snapshot loads with network_overrides)`,
          `for forks, ${install.replace(">= 1.8", ">= 1.12")}`,
        );
      }
      return check("vmm-version", "ok", `${label} ${version} at ${binary}`);
    }
  }
}

/**
 * The VMM doctor checked is bangerd's configured binary; the one that runs is the helper's. When they
 * differ, an ok check turns into a warning that says which runs (a failing one stays as it is).
 */
export function helperBinaryCheck(
  checked: DoctorCheck,
  vmm: VmmDriver,
  binary: string,
  helper: { readonly firecracker: string; readonly qemu: string } | undefined,
  configPath: string,
): DoctorCheck {
  const launched = helper ? (vmm === "firecracker" ? helper.firecracker : helper.qemu) : "";
  if (launched === "" || launched === binary || checked.status === "fail") return checked;
  const key = vmm === "firecracker" ? "firecracker.binary" : "qemu.binary";
  const other =
    vmm === "firecracker"
      ? `, or have the helper launch it (sudo banger system install --firecracker ${binary}, or dev up --firecracker)`
      : "";
  return check(
    "vmm-version",
    "warn",
    `${checked.detail}; but the helper launches ${launched}`,
    `set ${key} in ${configPath} to ${launched}${other}`,
  );
}
