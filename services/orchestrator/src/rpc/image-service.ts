import { UnimplementedError, implementService } from "@banger/common";
import { ImageService } from "@banger/gen/banger/v1/image_pb.js";
import type { ServiceImpl } from "@connectrpc/connect";
import type { PeerProbe } from "../core/status.js";
import { scopeOf } from "./scope.js";

export interface ImageServiceDeps {
  readonly puller: PeerProbe;
}

/**
 * `banger.v1.ImageService`. PullImage so far only checks that the image
 * puller answers (so a stopped puller is reported at once as UNAVAILABLE);
 * the pull itself comes with the image catalog.
 */
export function createImageService(deps: ImageServiceDeps): ServiceImpl<typeof ImageService> {
  return implementService(ImageService, {
    async pullImage(_req, ctx) {
      await deps.puller.identify(scopeOf(ctx));
      throw new UnimplementedError(`${ImageService.typeName}/PullImage is not implemented yet`, {
        reason: "NOT_IMPLEMENTED",
      });
    },
  });
}
