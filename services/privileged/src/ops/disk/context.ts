import { lstat } from "node:fs/promises";
import type { RunOptions, Runner } from "@banger/common/host-runner";
import { stateLayout } from "@banger/common/layout";
import type { HelperConfig } from "../../config.js";
import { deviceMapperStatus, type FeatureStatus } from "../../host/features.js";

/** What every disk op works with: the runner, the owner, and where the host's trees are. */
export interface DiskContext {
  readonly runner: Runner;
  readonly config: HelperConfig;
  readonly stateDir: string;
  /** Where sysfs is mounted. */
  readonly sysfs: string;
  /** The driver, not the node: /dev/mapper/control can exist on a kernel without device-mapper. */
  readonly deviceMapper: () => FeatureStatus;
  readonly mapperNode: (name: string) => string;
  /** The clone strategy's root disk of a VM. */
  readonly vmRootImage: (vmId: string) => string;
  /** e2fsprogs over guest-written filesystems run as the owner, never as root. */
  readonly asOwner: { readonly as: { readonly uid: number; readonly gid: number } };
}

export function diskContext(deps: {
  readonly runner: Runner;
  readonly config: HelperConfig;
  readonly sysfsRoot?: string;
  readonly devRoot?: string;
  readonly procRoot?: string;
}): DiskContext {
  const { runner, config } = deps;
  const stateDir = config.stateDir;
  const dev = deps.devRoot ?? "/dev";
  const proc = deps.procRoot ?? "/proc";
  return {
    runner,
    config,
    stateDir,
    sysfs: deps.sysfsRoot ?? "/sys",
    deviceMapper: () => deviceMapperStatus({ dev, proc }),
    mapperNode: (name: string) => `${dev}/mapper/${name}`,
    vmRootImage: (vmId: string) => stateLayout(stateDir).vm(vmId).rootDisk,
    asOwner: { as: { uid: config.ownerUid, gid: config.ownerGid } },
  };
}

export function opts(signal: AbortSignal | undefined): RunOptions {
  return signal ? { signal } : {};
}

export function isErrno(error: unknown, code: string): boolean {
  return error instanceof Error && (error as NodeJS.ErrnoException).code === code;
}

export async function present(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (error) {
    if (isErrno(error, "ENOENT")) return false;
    throw error;
  }
}
