/**
 * Which root-disk strategy and which VMM this host uses, and why: one answer
 * for the VM lifecycle and for `banger doctor`.
 */
import type { VmmDriver } from "../config/index.js";
import type { HostFeatures } from "./host.js";

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

/** The configured VMM; QEMU uses KVM when the host has it, else TCG. */
export function chooseVmm(
  configured: VmmDriver,
  features: Pick<HostFeatures, "kvm" | "kvmDetail">,
): Choice<VmmDriver> & { readonly kvm: boolean } {
  const noKvm = features.kvmDetail || "/dev/kvm absent";
  if (configured === "firecracker") {
    return {
      value: "firecracker",
      kvm: features.kvm,
      why: features.kvm ? "configured" : `configured; ${noKvm}`,
    };
  }
  return {
    value: "qemu-microvm",
    kvm: features.kvm,
    why: features.kvm ? "configured; KVM" : `configured; TCG: ${noKvm}`,
  };
}
