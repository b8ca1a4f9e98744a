/**
 * The host's capacity and banger's share of it (`banger top`'s bars): CPUs and memory of the host, the
 * filesystem that holds the state directory, and the blocks each VM's disk files hold on it. The VMs'
 * reservations (vcpu, memory) are in the VM list; what is measured here is what only the host knows.
 */
import { availableParallelism, totalmem } from "node:os";
import { stat, statfs } from "node:fs/promises";
import { stateLayout } from "@banger/common/layout";

export interface VmAllocation {
  readonly name: string;
  /** The clone, or the dm-snapshot's COW file: whichever of the two exists. */
  readonly rootDiskAllocatedBytes: number;
  readonly workDiskAllocatedBytes: number;
}

export interface HostCapacity {
  readonly hostCpus: number;
  readonly hostMemoryBytes: number;
  readonly stateDir: string;
  readonly stateFsSizeBytes: number;
  readonly stateFsUsedBytes: number;
  readonly allocatedBytes: number;
  readonly vms: readonly VmAllocation[];
}

/** Blocks a file holds (allocated, not apparent size); 0 when it does not exist. */
const allocated = async (path: string) => ((await stat(path).catch(() => undefined))?.blocks ?? 0) * 512;

export async function measureCapacity(
  stateDir: string,
  vms: readonly { readonly id: string; readonly name: string }[],
): Promise<HostCapacity> {
  const layout = stateLayout(stateDir);
  const perVm = await Promise.all(
    vms.map(async (vm): Promise<VmAllocation> => {
      const paths = layout.vm(vm.id);
      return {
        name: vm.name,
        rootDiskAllocatedBytes: (await allocated(paths.rootDisk)) + (await allocated(paths.rootCow)),
        workDiskAllocatedBytes: await allocated(paths.workDisk),
      };
    }),
  );
  const fs = await statfs(stateDir);
  return {
    hostCpus: availableParallelism(),
    hostMemoryBytes: totalmem(),
    stateDir,
    stateFsSizeBytes: fs.blocks * fs.bsize,
    stateFsUsedBytes: (fs.blocks - fs.bfree) * fs.bsize,
    allocatedBytes: perVm.reduce((sum, vm) => sum + vm.rootDiskAllocatedBytes + vm.workDiskAllocatedBytes, 0),
    vms: perVm,
  };
}
