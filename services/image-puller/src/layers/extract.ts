/**
 * Applies one OCI layer to a staging tree without ever following a link or
 * writing outside the tree. Names are kept byte for byte (any byte but `/`
 * and NUL, UTF-8 or not): they are read one byte a character ("latin1"
 * strings) and reach the file system as Buffers. Every entry name is checked
 * (no `..`, no NUL, no component longer than ext4's 255 bytes; a leading `/`
 * is stripped as tar does, so absolute names stay inside),
 * every parent component must be a real directory inside the tree, files are
 * created with O_EXCL | O_NOFOLLOW, hardlinks must point at a regular file
 * already in the tree, reached one directory at a time without following a
 * symlink. Ownership, modes, times, devices and capabilities are recorded in
 * `meta`, not applied; a device node or FIFO is an empty regular file in the
 * tree (the puller cannot mknod), made one inside the image.
 *
 * A layer is a stranger's input, so nothing in it sets how much memory or
 * disk the puller uses: the bytes stream through with backpressure from the
 * blob to the file being written (zstd in its own process behind a pipe,
 * gzip in zlib, which waits for its reader), files are written sparse (a
 * block of zeros is a hole), and the image's totals of uncompressed bytes
 * and entries, and the free space left, are checked as they grow.
 *
 * The parts: tree.ts (names and their confinement, parents, hardlinks),
 * entries.ts (each kind of entry), layer-stream.ts (decompression, the
 * byte-exact tar reader, what its errors mean), meter.ts (the limits, counted
 * as the layer grows), sparse-writer.ts (holes for zeros).
 */
import type { Readable } from "node:stream";
import type { GrowingBlob } from "../core/ports.js";
import { pipeline } from "node:stream/promises";
import { BangerError, HostCommandError } from "@banger/common/errors";
import { applyEntry, type LayerContext } from "./entries.js";
import { byteExactExtract, decompressed, layerError, malformed } from "./layer-stream.js";
import type { BuildLimits, BuildUsage } from "./limits.js";
import type { MetadataMap } from "./metadata.js";
import { LayerMeter } from "./meter.js";
import { layerTree } from "./tree.js";

export interface ApplyOptions {
  readonly signal: AbortSignal;
  readonly limits: BuildLimits;
  /** What the image's earlier layers used; this layer adds to it. */
  readonly usage: BuildUsage;
}

/**
 * Applies the layer (a blob's path, or a blob as it downloads) to `treeDir`;
 * returns the sha256 of the uncompressed tar (its diff_id).
 */
export async function applyLayer(
  treeDir: string,
  blob: string | GrowingBlob,
  meta: MetadataMap,
  options: ApplyOptions,
): Promise<{ diffId: string; entries: number }> {
  const meter = new LayerMeter(treeDir, options.limits, options.usage);
  const ctx: LayerContext = { tree: layerTree(treeDir, meta), meter };
  const extract = byteExactExtract();
  extract.on("entry", (header, stream, next) => {
    // An entry stream fails with the extract when it is destroyed; that error reaches the caller through the pipeline.
    stream.on("error", () => undefined);
    applyEntry(ctx, header, stream as unknown as Readable).then(
      () => next(),
      (error: unknown) => {
        stream.resume();
        extract.destroy(error as Error);
      },
    );
  });

  const { stream: source, zstd } = await decompressed(blob, options.signal);
  try {
    await pipeline(source, meter.counting(), extract, { signal: options.signal });
    await zstd?.exited;
  } catch (error) {
    zstd?.stop();
    // When zstd itself failed (not stopped by us just now), its own words say why.
    const tool = await zstd?.exited.then(
      () => undefined,
      (e: unknown) => e as HostCommandError,
    );
    if (!(error instanceof BangerError) && tool?.exitCode !== null && tool !== undefined) {
      throw malformed(tool.stderrTail, tool);
    }
    if (error instanceof HostCommandError) throw malformed(error.stderrTail, error);
    throw layerError(error);
  }
  return { diffId: meter.diffId(), entries: meter.entries };
}
