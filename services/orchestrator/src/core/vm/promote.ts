/** Promote: a stopped VM's disks become an image (root disk → root filesystem, work disk → work seed). */
import { AlreadyExistsError, FailedPreconditionError } from "@banger/common";
import { getImage, type OperationRecord } from "../../store/index.js";
import { validImageName } from "../images.js";
import type { VmContext } from "./context.js";

export async function promoteVm(ctx: VmContext, vmName: string, imageName: string): Promise<OperationRecord> {
  const vm = await ctx.find(vmName);
  const name = validImageName(imageName);
  const refuseRunning = () => {
    if (ctx.runtime.handles.has(vm.id)) {
      throw new FailedPreconditionError(`VM ${vmName} is running: stop it before promoting its disks`, {
        reason: "VM_RUNNING",
      });
    }
  };
  refuseRunning();
  if (vm.rootDiskStrategy === "dm-snapshot") {
    throw new FailedPreconditionError(
      `VM ${vmName}'s root disk is a dm-snapshot over image ${vm.imageName}: promoting it is not supported yet`,
      { reason: "PROMOTE_UNSUPPORTED" },
    );
  }
  if (await getImage(ctx.db, name)) {
    throw new AlreadyExistsError(`image ${name} already exists`, { reason: "IMAGE_NAME_TAKEN" });
  }
  const paths = ctx.state.vm(vm.id);
  return ctx.operations.start("promote-image", name, (op) =>
    // Under the VM's lifecycle lock: it cannot start while its disks are copied.
    ctx.runtime.lifecycle(vmName, async () => {
      refuseRunning();
      const image = await op.stage("publish", () =>
        ctx.images.adopt({
          name,
          rootfsPath: paths.rootDisk,
          workSeedPath: paths.workDisk,
          defaultKernel: vm.kernelName,
          source: "promoted",
          signal: op.signal,
        }),
      );
      ctx.logger.info({ image: name, vm: vmName }, "VM promoted to an image");
      return { kind: "image", image };
    }),
  );
}
