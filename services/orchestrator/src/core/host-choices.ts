/**
 * Which root-disk strategy and which VMM this host uses, and why: one answer
 * for the VM lifecycle and for `banger doctor`.
 */
import { access, constants } from "node:fs/promises";
import type { VmmDriver, VmmSetting } from "../config/index.js";
import type { HostFeatures } from "./ports.js";

export type RootDiskStrategy = "dm-snapshot" | "clone";

export interface Choice<T> {
  readonly value: T;
  /** Why, one short phrase, e.g. "no /dev/mapper/control". */
  readonly why: string;
}

/** dm-snapshot where the kernel has device-mapper, else a reflink or sparse copy of the image. */
export function chooseRootDiskStrategy(
  features: Pick<HostFeatures, "deviceMapper" | "deviceMapperDetail">,
): Choice<RootDiskStrategy> {
  return features.deviceMapper
    ? { value: "dm-snapshot", why: "device-mapper present" }
    : { value: "clone", why: features.deviceMapperDetail || "no /dev/mapper/control" };
}

/** Whether the VMM binaries the helper launches exist and are executable (as the owner, who runs them). */
export interface VmmBinariesPresent {
  readonly firecracker: boolean;
  readonly qemu: boolean;
}

/**
 * The VMM of a new VM. A configured driver is used as it is; "auto" takes Firecracker where KVM works and
 * its binary is there, else QEMU (`-M microvm`, KVM when usable, else TCG) where its binary is, else
 * Firecracker (whose launch then fails, and doctor says what is missing).
 */
export function chooseVmm(
  configured: VmmSetting,
  features: Pick<HostFeatures, "kvm" | "kvmDetail">,
  present: VmmBinariesPresent,
): Choice<VmmDriver> & { readonly kvm: boolean } {
  const noKvm = features.kvmDetail || "/dev/kvm absent";
  const { kvm } = features;
  if (configured === "firecracker") {
    return { value: "firecracker", kvm, why: kvm ? "configured" : `configured; ${noKvm}` };
  }
  if (configured === "qemu-microvm") {
    return { value: "qemu-microvm", kvm, why: kvm ? "configured; KVM" : `configured; TCG: ${noKvm}` };
  }
  if (kvm && present.firecracker) return { value: "firecracker", kvm, why: "auto: KVM and Firecracker" };
  if (present.qemu) {
    return {
      value: "qemu-microvm",
      kvm,
      why: kvm ? "auto: KVM, no Firecracker binary" : `auto: TCG (no Firecracker without KVM): ${noKvm}`,
    };
  }
  return {
    value: "firecracker",
    kvm,
    why: `auto: neither VMM usable (${kvm ? "" : `${noKvm}; `}no QEMU binary${present.firecracker ? "" : ", no Firecracker binary"})`,
  };
}

/** Whether each binary exists and this process (the owner, as whom VMMs run) may execute it. */
export async function vmmBinariesPresent(binaries: {
  readonly firecracker: string;
  readonly qemu: string;
}): Promise<VmmBinariesPresent> {
  const runs = (path: string) =>
    access(path, constants.X_OK).then(
      () => true,
      () => false,
    );
  const [firecracker, qemu] = await Promise.all([runs(binaries.firecracker), runs(binaries.qemu)]);
  return { firecracker, qemu };
}
