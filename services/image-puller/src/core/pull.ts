/**
 * One pull: resolve → layers (downloaded concurrently, applied in order as
 * soon as their turn comes, each checked against the config's diff_ids) →
 * root filesystem → work seed → manifest. Everything is written inside the
 * staging directory the orchestrator named; on failure nothing is left there.
 * Each stage is a function of the pull's run (pullRun); downloads.ts starts
 * the downloads, staging.ts holds what the built-in image `tiny` shares.
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { FailedPreconditionError, ResourceExhaustedError } from "@banger/common/errors";
import { parseReference, type ImageReference } from "@banger/common/registry";
import { DEFAULT_PLATFORM, type Descriptor, type Platform } from "../registry/manifest.js";
import { PullerReason } from "../reasons.js";
import { downloadAll, type LayerDownload, type LayerEvent } from "./downloads.js";
import type { Leases } from "./leases.js";
import type { BuildKey, BuiltCache, ImageBuilder, RegistryClient, ResolvedImage, ScratchDir } from "./ports.js";
import {
  builderStages,
  emptyStaging,
  prepareStaging,
  ROOTFS_FILE,
  stageTimer,
  WORK_SEED_FILE,
  type StageEvent,
} from "./staging.js";

export type PullEvent = StageEvent | LayerEvent;

export interface PullRequest {
  readonly reference: string;
  readonly stagingDir: string;
  readonly platform?: Platform | undefined;
  readonly minRootfsMib: number;
  readonly headroomPercent: number;
  readonly inodeMarginPercent: number;
  readonly skipWorkSeed: boolean;
  readonly maxConcurrentDownloads: number;
}

export interface PullResult {
  readonly manifestDigest: string;
  readonly configDigest: string;
  readonly platform: string;
  readonly canonicalReference: string;
  readonly rootfsFile: string;
  readonly rootfsBytes: number;
  readonly workSeedFile: string;
  readonly workSeedBytes: number;
  readonly manifestFile: string;
  readonly downloadedBytes: number;
  readonly entrypoint: readonly string[];
  readonly cmd: readonly string[];
  readonly env: readonly string[];
  readonly user: string;
  readonly workingDir: string;
}

export interface PullDeps {
  readonly registry: RegistryClient;
  /**
   * Where the unpacked tree goes while the images are built: a fast scratch
   * directory (tmpfs) when it has room, else beside the staging directory.
   */
  readonly scratchDir?: ScratchDir;
  /** Images built before: a re-pull of the same image with the same settings copies them. */
  readonly builtCache?: BuiltCache;
  /** Blobs this pull uses are held here while it runs, so a cache prune leaves them alone. */
  readonly leases?: Leases;
  /**
   * A fresh builder per pull (it holds the metadata recorded from that pull's layers);
   * `maxTreeBytes` lowers its limit on the unpacked bytes (a tree in memory, on tmpfs).
   */
  readonly createBuilder: (maxTreeBytes?: number) => ImageBuilder;
  /** The orchestrator's state directory: staging directories must be inside it. */
  readonly stateDir: string;
}

/** Unpacked bytes a tree in the scratch directory may take, per compressed byte of its layers. */
const SCRATCH_EXPANSION = 4;

const MANIFEST_FILE = "manifest.json";

/** One pull while it runs. */
interface PullRun {
  readonly deps: PullDeps;
  readonly req: PullRequest;
  readonly signal: AbortSignal;
  readonly emit: (event: PullEvent) => void;
  readonly reference: ImageReference;
  readonly timed: ReturnType<typeof stageTimer>;
  /** The tree beside the staging directory, used unless a scratch directory has room. */
  readonly diskTree: string;
  /** Where the layers are unpacked, and the builder holding their metadata: both change when a tree in memory outgrows it. */
  tree: string;
  builder: ImageBuilder;
  downloadedBytes: number;
}

export async function pull(
  deps: PullDeps,
  req: PullRequest,
  signal: AbortSignal,
  emit: (event: PullEvent) => void,
): Promise<PullResult> {
  const reference = parseReference(req.reference);
  const builder = deps.createBuilder();
  await prepareStaging(deps.stateDir, req.stagingDir);
  const diskTree = join(req.stagingDir, ".tree");
  const run: PullRun = {
    deps,
    req,
    signal,
    emit,
    reference,
    timed: stageTimer(emit),
    diskTree,
    tree: diskTree,
    builder,
    downloadedBytes: 0,
  };
  let release: (() => void) | undefined;
  try {
    const resolved = await run.timed("resolve", () =>
      deps.registry.resolve(reference, req.platform ?? DEFAULT_PLATFORM, signal),
    );
    const digests = [
      resolved.manifestDigest,
      resolved.manifest.config.digest,
      ...(resolved.indexDigest === undefined ? [] : [resolved.indexDigest]),
      ...resolved.manifest.layers.map((layer) => layer.digest),
    ];
    release = deps.leases?.hold(digests);
    const builtKey = deps.builtCache?.key(buildKey(resolved, req));
    const restored = builtKey === undefined ? undefined : await restoreBuilt(run, builtKey, digests);
    if (restored !== undefined) return restored;
    await unpackLayers(run, resolved.manifest.layers, diffIdsOf(resolved));
    const result = await buildImages(run, resolved);
    await writeManifest(run, result, resolved);
    await deps.registry.cache.touch(digests);
    if (deps.builtCache && builtKey !== undefined) {
      const files = [ROOTFS_FILE, ...(req.skipWorkSeed ? [] : [WORK_SEED_FILE]), MANIFEST_FILE];
      await deps.builtCache.keep(builtKey, req.stagingDir, files, result);
    }
    return result;
  } catch (error) {
    await rm(run.tree, { recursive: true, force: true });
    await emptyStaging(req.stagingDir);
    throw error;
  } finally {
    release?.();
  }
}

function buildKey(resolved: ResolvedImage, req: PullRequest): BuildKey {
  return {
    manifestDigest: resolved.manifestDigest,
    minRootfsMib: req.minRootfsMib,
    headroomPercent: req.headroomPercent,
    inodeMarginPercent: req.inodeMarginPercent,
    skipWorkSeed: req.skipWorkSeed,
  };
}

/** The images built before with these settings, copied into the staging directory; undefined when there are none. */
async function restoreBuilt(
  run: PullRun,
  builtKey: string,
  digests: readonly string[],
): Promise<PullResult | undefined> {
  const { deps, req, emit } = run;
  if (!deps.builtCache) return undefined;
  const t0 = performance.now();
  const stored = (await deps.builtCache.restore(builtKey, req.stagingDir)) as PullResult | undefined;
  if (stored === undefined) return undefined;
  await deps.registry.cache.touch(digests);
  const durationMs = Math.round(performance.now() - t0);
  emit({ kind: "stage", stage: "layers", done: false, durationMs: 0, message: "" });
  emit({ kind: "stage", stage: "layers", done: true, durationMs, message: "built before: copied" });
  return { ...stored, downloadedBytes: 0 };
}

/** The config's diff_ids, one for each layer. */
function diffIdsOf(resolved: ResolvedImage): readonly string[] {
  const layers = resolved.manifest.layers;
  const diffIds = resolved.config.rootfs.diff_ids;
  if (diffIds.length !== layers.length) {
    throw new FailedPreconditionError(`the image config lists ${diffIds.length} diff_ids for ${layers.length} layers`, {
      reason: "DIFF_ID_MISMATCH",
    });
  }
  return diffIds;
}

/** The layers stage: every layer downloaded and applied in order, in memory when the scratch directory has room. */
async function unpackLayers(run: PullRun, layers: readonly Descriptor[], diffIds: readonly string[]): Promise<void> {
  const { deps, req, signal, emit } = run;
  // The scratch directory (tmpfs) is memory: a tree there may take what the layers' sizes promise
  // (four times their compressed bytes), no more, whatever they claim to hold. A layer that unpacks
  // to more (a bomb, or just text that compresses well) starts over on disk, with the image's limits.
  const scratchBytes = layers.reduce((sum, l) => sum + l.size, 0) * SCRATCH_EXPANSION;
  const scratch = await deps.scratchDir?.(scratchBytes);
  await run.timed(
    "layers",
    async () => {
      const downloads = downloadAll(
        deps.registry,
        run.reference,
        layers,
        req.maxConcurrentDownloads || 3,
        signal,
        emit,
        (n) => {
          run.downloadedBytes += n;
        },
      );
      // Each download is awaited in turn below; a failure of one not reached yet must not go unhandled.
      for (const download of downloads) download.blob.catch(() => undefined);
      if (scratch && (await unpackInMemory(run, scratch, scratchBytes, layers, diffIds, downloads))) return;
      await mkdir(run.tree, { mode: 0o755 });
      await applyInOrder(run, layers, diffIds, downloads);
      await Promise.all(downloads.map((d) => d.blob)); // surface any failure of a download not awaited yet
    },
    `${layers.length} layers`,
  );
}

/** Unpacks into the scratch directory; false (and back on disk) when the layers unpack to more than it may take. */
async function unpackInMemory(
  run: PullRun,
  scratch: string,
  scratchBytes: number,
  layers: readonly Descriptor[],
  diffIds: readonly string[],
  downloads: readonly LayerDownload[],
): Promise<boolean> {
  run.tree = await mkdtemp(scratch);
  run.builder = run.deps.createBuilder(scratchBytes);
  try {
    await applyInOrder(run, layers, diffIds, downloads);
    return true;
  } catch (error) {
    if (!(error instanceof ResourceExhaustedError && error.reason === PullerReason.IMAGE_TOO_LARGE)) throw error;
    await rm(run.tree, { recursive: true, force: true });
    run.tree = run.diskTree;
    run.builder = run.deps.createBuilder();
    run.emit({
      kind: "stage",
      stage: "layers",
      done: false,
      durationMs: 0,
      message: `the layers unpack to more than the ${scratchBytes} bytes allowed in memory: unpacking on disk`,
    });
    return false;
  }
}

/**
 * Applies each layer once the one before it is applied, while it downloads
 * (or from the cache), checked against its digest and its diff_id: what was
 * unpacked from a blob that turns out not to match its digest fails the pull,
 * and the tree is thrown away.
 */
async function applyInOrder(
  run: PullRun,
  layers: readonly Descriptor[],
  diffIds: readonly string[],
  downloads: readonly LayerDownload[],
): Promise<void> {
  for (const [index, layer] of layers.entries()) {
    const download = downloads[index];
    if (download === undefined) throw new Error(`no download for layer ${index}`);
    const { diffId } = await run.builder.applyLayer(run.tree, await download.source, run.signal);
    await download.blob;
    if (diffId !== diffIds[index]) {
      throw new FailedPreconditionError(
        `layer ${index} (${layer.digest}) unpacks to ${diffId}, not ${diffIds[index]}`,
        {
          reason: "DIFF_ID_MISMATCH",
        },
      );
    }
    run.emit({
      kind: "layer",
      digest: layer.digest,
      index,
      doneBytes: layer.size,
      totalBytes: layer.size,
      state: "applied",
    });
  }
}

/** The root filesystem and work seed from the tree, verified; the tree is gone after. */
async function buildImages(run: PullRun, resolved: ResolvedImage): Promise<PullResult> {
  const { req, signal, builder, tree } = run;
  const rootfs = join(req.stagingDir, ROOTFS_FILE);
  const { bytes: rootfsBytes } = await builder.buildRootfs(
    tree,
    rootfs,
    {
      minMib: req.minRootfsMib || 256,
      headroomPercent: req.headroomPercent || 20,
      inodeMarginPercent: req.inodeMarginPercent || 25,
      signal,
    },
    builderStages(run.emit),
  );
  // The root filesystem is checked while the work seed is built (e2fsck reads it, mkfs writes another file).
  const rootfsChecked = builder.verify(rootfs, signal);
  const checkDone = rootfsChecked.then(
    () => undefined,
    () => undefined,
  );
  let workSeedBytes = 0;
  try {
    if (!req.skipWorkSeed) {
      const seed = join(req.stagingDir, WORK_SEED_FILE);
      workSeedBytes = (await run.timed("work-seed", () => builder.buildWorkSeed(tree, seed, signal))).bytes;
    }
  } catch (error) {
    await checkDone; // no e2fsck left reading a staging directory being emptied
    throw error;
  }
  await run.timed("verify", async () => {
    await rootfsChecked;
    if (!req.skipWorkSeed) await builder.verify(join(req.stagingDir, WORK_SEED_FILE), signal);
  });
  await rm(tree, { recursive: true, force: true });

  const config = resolved.config.config;
  return {
    manifestDigest: resolved.manifestDigest,
    configDigest: resolved.manifest.config.digest,
    platform: resolved.platform,
    canonicalReference: run.reference.canonical,
    rootfsFile: ROOTFS_FILE,
    rootfsBytes,
    workSeedFile: req.skipWorkSeed ? "" : WORK_SEED_FILE,
    workSeedBytes,
    manifestFile: MANIFEST_FILE,
    downloadedBytes: run.downloadedBytes,
    entrypoint: config.Entrypoint ?? [],
    cmd: config.Cmd ?? [],
    env: config.Env ?? [],
    user: config.User ?? "",
    workingDir: config.WorkingDir ?? "",
  };
}

/** manifest.json in the staging directory: the result, the layers and their diff_ids. */
async function writeManifest(run: PullRun, result: PullResult, resolved: ResolvedImage): Promise<void> {
  const layers = resolved.manifest.layers;
  const diffIds = resolved.config.rootfs.diff_ids;
  await writeFile(
    join(run.req.stagingDir, MANIFEST_FILE),
    JSON.stringify({ ...result, layers: layers.map((l) => ({ digest: l.digest, size: l.size })), diffIds }, null, 2),
    { mode: 0o644 },
  );
}
