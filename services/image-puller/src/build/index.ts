import { applyLayer } from "./extract.js";
import { buildRootfs, buildWorkSeed, verifyExt4 } from "./ext4.js";
import type { MetadataMap } from "./metadata.js";
import type { ImageBuilder } from "../core/pull.js";

export { applyLayer, treePath } from "./extract.js";
export { buildRootfs, buildWorkSeed, verifyExt4 } from "./ext4.js";
export type { EntryMeta, MetadataMap } from "./metadata.js";

/** Largest single file a layer may hold: 16 GiB. */
const MAX_FILE_BYTES = 16 * 1024 ** 3;

/**
 * The builder of one pull: the recorded metadata of its tree lives here
 * between the layers and the images built from them.
 */
export function createImageBuilder(): ImageBuilder {
  const meta: MetadataMap = new Map();
  return {
    applyLayer: (treeDir, blobPath, signal) =>
      applyLayer(treeDir, blobPath, meta, { signal, maxFileBytes: MAX_FILE_BYTES }),
    buildRootfs: (treeDir, outFile, options, onStage) => buildRootfs(treeDir, meta, outFile, options, onStage),
    buildWorkSeed: (treeDir, outFile, signal) => buildWorkSeed(treeDir, meta, outFile, signal),
    verify: verifyExt4,
  };
}
