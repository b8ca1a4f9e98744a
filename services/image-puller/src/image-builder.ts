import { applyLayer } from "./layers/extract.js";
import { buildRootfs, buildWorkSeed, verifyExt4 } from "./ext4/image.js";
import { DEFAULT_BUILD_LIMITS, type BuildLimits, type BuildUsage } from "./layers/limits.js";
import type { MetadataMap } from "./layers/metadata.js";
import type { ImageBuilder } from "./core/ports.js";

export { applyLayer } from "./layers/extract.js";
export { treePath } from "./layers/tree.js";
export { buildRootfs, buildWorkSeed, verifyExt4 } from "./ext4/image.js";
export { DEFAULT_BUILD_LIMITS, type BuildLimits, type BuildUsage } from "./layers/limits.js";
export type { EntryMeta, MetadataMap } from "./layers/metadata.js";

/**
 * The builder of one pull: the recorded metadata of its tree and what its
 * layers used of the limits live here between the layers and the images
 * built from them.
 */
export function createImageBuilder(limits: BuildLimits = DEFAULT_BUILD_LIMITS): ImageBuilder {
  const meta: MetadataMap = new Map();
  const usage: BuildUsage = { bytes: 0, entries: 0 };
  return {
    applyLayer: (treeDir, blob, signal) => applyLayer(treeDir, blob, meta, { signal, limits, usage }),
    buildRootfs: (treeDir, outFile, options, onStage) => buildRootfs(treeDir, meta, outFile, options, onStage),
    buildWorkSeed: (treeDir, outFile, signal) => buildWorkSeed(treeDir, meta, outFile, signal),
    verify: verifyExt4,
  };
}
