/** What booting real guests through banger's services needs from the host (QEMU under TCG). */
import { EXT4_TOOLS, type Need } from "@banger/common/testing";
import { REGISTRY_TOOLS } from "../../../services/image-puller/test-support/registry/oci-image.js";
import { KIT_TOOLS } from "../../../services/orchestrator/test-support/initramfs.js";
import { NETNS_TOOLS, VMM_TOOLS } from "../../integration/netns.js";
import { KERNEL_VERSION } from "./kernel-package.js";

export const OFFLINE_GUEST_NEEDS: readonly Need[] = [
  "/usr/bin/qemu-system-x86_64",
  { what: "a kernel in /boot with its modules (linux-image-amd64)", present: KERNEL_VERSION !== undefined },
  "xz", // Debian's vmlinuz and modules
  // banger kernel initramfs: its busybox, and the guest kit it bundles
  ...KIT_TOOLS,
  ...VMM_TOOLS,
  ...NETNS_TOOLS,
  ...EXT4_TOOLS,
  "losetup",
];

/** The same with the images coming from a registry on 127.0.0.1. */
export const REAL_GUEST_NEEDS: readonly Need[] = [...OFFLINE_GUEST_NEEDS, ...REGISTRY_TOOLS];
