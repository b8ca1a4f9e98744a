import { implementService } from "@banger/common";
import { KernelService } from "@banger/gen/banger/v1/kernel_pb.js";
import type { ServiceImpl } from "@connectrpc/connect";
import type { KernelCatalog } from "../core/kernels.js";
import { kernelToProto, operationToProto } from "./to-proto.js";

/** `banger.v1.KernelService`: import and build an initramfs (operations), list, show, set the default, delete. */
export function createKernelService(kernels: KernelCatalog): ServiceImpl<typeof KernelService> {
  return implementService(KernelService, {
    async importKernel(req) {
      const operation = await kernels.import({
        name: req.name,
        sourceDir: req.sourceDir,
        setDefault: req.setDefault,
        replace: req.replace,
      });
      return { operation: operationToProto(operation) };
    },
    async buildInitramfs(req) {
      return { operation: operationToProto(await kernels.buildInitramfs(req.name)) };
    },
    async setDefaultKernel(req) {
      return { kernel: kernelToProto(await kernels.setDefault(req.name)) };
    },
    async deleteKernel(req) {
      return kernels.delete(req.name);
    },
    async listKernels() {
      return { kernels: (await kernels.list()).map(kernelToProto) };
    },
    async getKernel(req) {
      return { kernel: kernelToProto(await kernels.get(req.name)) };
    },
  });
}
