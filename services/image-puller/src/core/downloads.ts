import type { ImageReference } from "@banger/common/registry";
import type { Descriptor } from "../registry/manifest.js";
import type { RegistryClient } from "./ports.js";

/** A layer's progress: waiting for a download slot, downloading, found cached or downloaded, then applied. */
export interface LayerEvent {
  readonly kind: "layer";
  readonly digest: string;
  readonly index: number;
  readonly doneBytes: number;
  readonly totalBytes: number;
  readonly state: "waiting" | "downloading" | "cached" | "downloaded" | "applied";
}

/** Starts every layer's download with at most `limit` at a time; the promises resolve to cached blob paths, in layer order. */
export function downloadAll(
  registry: RegistryClient,
  reference: ImageReference,
  layers: readonly Descriptor[],
  limit: number,
  signal: AbortSignal,
  emit: (event: LayerEvent) => void,
  onDownloaded: (bytes: number) => void,
): Promise<string>[] {
  let active = 0;
  const queue: (() => void)[] = [];
  const slot = () =>
    new Promise<void>((resolve) => {
      if (active < limit) {
        active++;
        resolve();
      } else {
        queue.push(() => {
          active++;
          resolve();
        });
      }
    });
  const release = () => {
    active--;
    queue.shift()?.();
  };
  return layers.map(async (layer, index) => {
    emit({ kind: "layer", digest: layer.digest, index, doneBytes: 0, totalBytes: layer.size, state: "waiting" });
    await slot();
    try {
      let fetched = 0;
      const path = await registry.fetchBlob(reference, layer, {
        signal,
        onProgress: (doneBytes) => {
          fetched = doneBytes;
          emit({ kind: "layer", digest: layer.digest, index, doneBytes, totalBytes: layer.size, state: "downloading" });
        },
      });
      onDownloaded(fetched);
      const state = fetched === 0 ? "cached" : "downloaded";
      emit({ kind: "layer", digest: layer.digest, index, doneBytes: layer.size, totalBytes: layer.size, state });
      return path;
    } finally {
      release();
    }
  });
}
