import { implementService } from "@banger/common";
import { ImageService } from "@banger/gen/banger/v1/image_pb.js";
import type { ServiceImpl } from "@connectrpc/connect";
import { CATALOG, type ImageCatalog } from "../core/images.js";
import type { OperationRecord } from "../store/index.js";
import { imageToProto, operationToProto } from "./to-proto.js";
import { scopeOf } from "./scope.js";

/** `banger.v1.ImageService`: pull (an operation), list, show, delete, the catalog. */
export function createImageService(
  images: ImageCatalog,
  promote: (vm: string, name: string) => Promise<OperationRecord>,
): ServiceImpl<typeof ImageService> {
  return implementService(ImageService, {
    async pullImage(req, ctx) {
      const operation = await images.pull(
        {
          reference: req.reference,
          name: req.name,
          platform: req.platform,
          minRootfsMib: Number(req.minRootfsMib),
          replace: req.replace,
        },
        scopeOf(ctx),
      );
      return { operation: operationToProto(operation) };
    },
    async registerImage(req) {
      const image = await images.register({
        name: req.name,
        rootfsPath: req.rootfsPath,
        workSeedPath: req.workSeedPath,
        defaultKernel: req.defaultKernel,
      });
      return { image: imageToProto(image) };
    },
    async promoteImage(req) {
      return { operation: operationToProto(await promote(req.vm, req.name)) };
    },
    async listImages() {
      return { images: (await images.list()).map(imageToProto) };
    },
    async getImage(req) {
      return { image: imageToProto(await images.get(req.name)) };
    },
    async deleteImage(req) {
      return images.delete(req.name);
    },
    async listCatalog() {
      const local = new Set((await images.list()).map((i) => i.name));
      return { entries: CATALOG.map((entry) => ({ ...entry, local: local.has(entry.name) })) };
    },
  });
}
