/**
 * This machine's Debian kernel (linux-image-amd64) in a distribution package's
 * layout, for `banger kernel import`: /boot/vmlinuz-<version> and only the
 * modules banger's initramfs loads (the whole tree is 400 MB).
 */
import { copyFileSync, existsSync, mkdirSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { planModules, readModuleIndex } from "../../../services/orchestrator/src/guest/initramfs.js";

/** The owner's config.toml for the end-to-end guests: QEMU (TCG here), small VMs and root disks. */
export const TCG_GUEST_CONFIG = [
  'vmm = "qemu-microvm"',
  "[vm]",
  "vcpu = 1",
  "memory_mib = 256",
  "work_disk_mib = 256",
  "[image]",
  "min_rootfs_mib = 64",
  "",
].join("\n");

/** The newest kernel in /boot that has its modules installed, if any. */
export const KERNEL_VERSION = existsSync("/boot")
  ? readdirSync("/boot")
      .filter((f) => f.startsWith("vmlinuz-"))
      .map((f) => f.slice("vmlinuz-".length))
      .filter((v) => existsSync(join("/lib/modules", v, "modules.dep")))
      .sort()
      .at(-1)
  : undefined;

/** Writes the package into `pkg`; returns how many modules it holds. */
export async function writeKernelPackage(version: string, pkg: string): Promise<number> {
  const modules = join(pkg, "lib", "modules", version);
  mkdirSync(join(pkg, "boot"), { recursive: true });
  copyFileSync(join("/boot", `vmlinuz-${version}`), join(pkg, "boot", `vmlinuz-${version}`));
  const hostModules = join("/lib/modules", version);
  const plan = planModules(await readModuleIndex(hostModules));
  for (const file of ["modules.dep", "modules.builtin", "modules.alias", "modules.softdep", "modules.order"]) {
    if (existsSync(join(hostModules, file))) {
      mkdirSync(modules, { recursive: true });
      copyFileSync(join(hostModules, file), join(modules, file));
    }
  }
  for (const module of plan.load) {
    mkdirSync(dirname(join(modules, module.path)), { recursive: true });
    copyFileSync(join(hostModules, module.path), join(modules, module.path));
  }
  return plan.load.length;
}
