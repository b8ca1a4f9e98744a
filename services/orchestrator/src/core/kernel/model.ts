/** A kernel in the catalog: its view, its files, and the checks of its name. */
import { existsSync } from "node:fs";
import { InvalidArgumentError } from "@banger/common";
import { kernelDirFiles } from "@banger/common/layout";
import type { KernelRecord } from "../../store/index.js";

/** A kernel with the images and VMs that use it. */
export interface KernelView extends KernelRecord {
  /** "image:<name>"… then "vm:<name>"…, each sorted (it cannot be deleted while any do). */
  readonly usedBy: readonly string[];
}

/** The catalog name of the host's kernel `version`: "host-6.1.0-27-amd64". */
export function hostKernelName(version: string): string {
  return validKernelName(
    `host-${version
      .toLowerCase()
      .replace(/[^a-z0-9._-]/g, "-")
      .slice(0, 59)}`,
  );
}

/** The files of a kernel in the catalog. */
export interface KernelFiles {
  /** `vmlinux` when uncompressed, else `vmlinuz`. */
  readonly kernel: string;
  readonly initrd: string | null;
  /** The `lib/modules/<version>` tree. */
  readonly modules: string | null;
  /** Whether its initrd is banger's with the guest kit (an agent to wait for and ask). */
  readonly kit: boolean;
}

/** The files of `kernel`, stored in `dir`. */
export function kernelFiles(dir: string, kernel: KernelRecord): KernelFiles {
  const files = kernelDirFiles(dir);
  return {
    kernel: files.kernel(kernel.uncompressed),
    initrd: kernel.initrdBytes > 0 ? files.initrd : null,
    modules: kernel.hasModules ? files.modules : null,
    kit: kernel.initrdBytes > 0 && existsSync(files.kitMarker),
  };
}

const KERNEL_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

export function validKernelName(name: string): string {
  if (!KERNEL_NAME.test(name)) {
    throw new InvalidArgumentError(`kernel name must match ${KERNEL_NAME.source}, got ${JSON.stringify(name)}`, {
      reason: "INVALID_KERNEL_NAME",
    });
  }
  return name;
}
