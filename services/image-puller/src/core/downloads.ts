import type { ImageReference } from "@banger/common/registry";
import type { Descriptor } from "../registry/manifest.js";
import type { GrowingBlob, RegistryClient } from "./ports.js";

/** A layer's progress: waiting for a download slot, downloading, found cached or downloaded, then applied. */
export interface LayerEvent {
  readonly kind: "layer";
  readonly digest: string;
  readonly index: number;
  readonly doneBytes: number;
  readonly totalBytes: number;
  readonly state: "waiting" | "downloading" | "cached" | "downloaded" | "applied";
}

/** One layer's download. */
export interface LayerDownload {
  /** The verified blob's path in the cache. */
  readonly blob: Promise<string>;
  /**
   * What to unpack the layer from as soon as there is something: the blob as
   * it is written (unverified until `blob` resolves) when its download is under
   * way, else the cached blob's path.
   */
  readonly source: Promise<string | GrowingBlob>;
}

/** Starts every layer's download with at most `limit` at a time, in layer order. */
export function downloadAll(
  registry: RegistryClient,
  reference: ImageReference,
  layers: readonly Descriptor[],
  limit: number,
  signal: AbortSignal,
  emit: (event: LayerEvent) => void,
  onDownloaded: (bytes: number) => void,
): LayerDownload[] {
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
  const fetchOne = async (
    layer: Descriptor,
    index: number,
    onWriting: (blob: GrowingBlob) => void,
  ): Promise<string> => {
    emit({ kind: "layer", digest: layer.digest, index, doneBytes: 0, totalBytes: layer.size, state: "waiting" });
    await slot();
    try {
      let fetched = 0;
      const path = await registry.fetchBlob(reference, layer, {
        signal,
        onWriting,
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
  };
  return layers.map((layer, index) => {
    let writing: (blob: GrowingBlob) => void = () => undefined;
    const growing = new Promise<GrowingBlob>((resolve) => (writing = resolve));
    const blob = fetchOne(layer, index, writing);
    // Whichever comes first; a failure before either is the blob's.
    const source = Promise.race([growing, blob]);
    source.catch(() => undefined);
    return { blob, source };
  });
}
