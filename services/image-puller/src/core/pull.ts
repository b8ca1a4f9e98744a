/**
 * One pull: resolve → layers (downloaded concurrently, applied in order as
 * soon as their turn comes, each checked against the config's diff_ids) →
 * root filesystem → work seed → manifest. Everything is written inside the
 * staging directory the orchestrator named; on failure nothing is left there.
 */
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { isAbsolute, join, normalize } from "node:path";
import {
  FailedPreconditionError,
  InvalidArgumentError,
  PermissionDeniedError,
  ResourceExhaustedError,
} from "@banger/common/errors";
import {
  DEFAULT_PLATFORM,
  parseReference,
  type Descriptor,
  type Platform,
  type RegistryClient,
} from "../registry/index.js";
import type { BuiltCache } from "./built-cache.js";

export type PullStageName = "resolve" | "layers" | "mkfs" | "ownership" | "work-seed" | "verify";

export type PullEvent =
  | {
      readonly kind: "stage";
      readonly stage: PullStageName;
      readonly done: boolean;
      readonly durationMs: number;
      readonly message: string;
    }
  | {
      readonly kind: "layer";
      readonly digest: string;
      readonly index: number;
      readonly doneBytes: number;
      readonly totalBytes: number;
      readonly state: "waiting" | "downloading" | "cached" | "downloaded" | "applied";
    };

/** Turns layers into a tree and the tree into ext4 images (layers/ and ext4/ implement it). */
export interface ImageBuilder {
  /** Applies the compressed layer at `blobPath` onto the tree at `treeDir`; returns the uncompressed digest. */
  applyLayer(treeDir: string, blobPath: string, signal: AbortSignal): Promise<{ diffId: string }>;
  /** Builds the root filesystem (mkfs, then ownership restored) from the tree. */
  buildRootfs(
    treeDir: string,
    outFile: string,
    options: { minMib: number; headroomPercent: number; inodeMarginPercent: number; signal: AbortSignal },
    onStage: (stage: "mkfs" | "ownership", done: boolean) => void,
  ): Promise<{ bytes: number }>;
  buildWorkSeed(treeDir: string, outFile: string, signal: AbortSignal): Promise<{ bytes: number }>;
  /** `e2fsck -fn`: throws when the image is not clean. */
  verify(file: string, signal: AbortSignal): Promise<void>;
}

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
  readonly scratchDir?: (neededBytes: number) => Promise<string | undefined>; // a mkdtemp prefix
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

const ROOTFS_FILE = "rootfs.ext4";
const WORK_SEED_FILE = "work-seed.ext4";
const MANIFEST_FILE = "manifest.json";

/** The staging directory must be an absolute, normalised path strictly inside the state directory, and empty. */
export async function prepareStaging(stateDir: string, stagingDir: string): Promise<void> {
  if (!isAbsolute(stagingDir) || normalize(stagingDir) !== stagingDir || stagingDir.endsWith("/")) {
    throw new InvalidArgumentError("staging_dir must be an absolute, normalised path", {
      reason: "INVALID_STAGING_DIR",
    });
  }
  if (!stagingDir.startsWith(`${stateDir}/`)) {
    throw new PermissionDeniedError(`staging_dir must be inside banger's state directory ${stateDir}`, {
      reason: "STAGING_OUTSIDE_STATE_DIR",
    });
  }
  await mkdir(stagingDir, { recursive: true, mode: 0o700 });
  if ((await readdir(stagingDir)).length > 0) {
    throw new FailedPreconditionError(`staging_dir ${stagingDir} is not empty`, { reason: "STAGING_NOT_EMPTY" });
  }
}

/** Runs a stage's work between its start and done events, the done one with its duration and `message`. */
export function stageTimer(emit: (event: Extract<PullEvent, { kind: "stage" }>) => void) {
  return async <T>(stage: PullStageName, work: () => Promise<T>, message = ""): Promise<T> => {
    const t0 = performance.now();
    emit({ kind: "stage", stage, done: false, durationMs: 0, message: "" });
    const value = await work();
    emit({ kind: "stage", stage, done: true, durationMs: Math.round(performance.now() - t0), message });
    return value;
  };
}

export async function pull(
  deps: PullDeps,
  req: PullRequest,
  signal: AbortSignal,
  emit: (event: PullEvent) => void,
): Promise<PullResult> {
  const reference = parseReference(req.reference);
  let builder = deps.createBuilder();
  await prepareStaging(deps.stateDir, req.stagingDir);
  let tree = join(req.stagingDir, ".tree");
  let release: (() => void) | undefined;
  const timed = stageTimer(emit);
  try {
    const resolved = await timed("resolve", () =>
      deps.registry.resolve(reference, req.platform ?? DEFAULT_PLATFORM, signal),
    );
    const digests = [
      resolved.manifestDigest,
      resolved.manifest.config.digest,
      ...(resolved.indexDigest === undefined ? [] : [resolved.indexDigest]),
      ...resolved.manifest.layers.map((layer) => layer.digest),
    ];
    release = deps.leases?.hold(digests);
    const builtKey = deps.builtCache?.key({
      manifestDigest: resolved.manifestDigest,
      minRootfsMib: req.minRootfsMib,
      headroomPercent: req.headroomPercent,
      inodeMarginPercent: req.inodeMarginPercent,
      skipWorkSeed: req.skipWorkSeed,
    });
    if (deps.builtCache && builtKey !== undefined) {
      const t0 = performance.now();
      const stored = (await deps.builtCache.restore(builtKey, req.stagingDir)) as PullResult | undefined;
      if (stored !== undefined) {
        await deps.registry.cache.touch(digests);
        const durationMs = Math.round(performance.now() - t0);
        emit({ kind: "stage", stage: "layers", done: false, durationMs: 0, message: "" });
        emit({ kind: "stage", stage: "layers", done: true, durationMs, message: "built before: copied" });
        return { ...stored, downloadedBytes: 0 };
      }
    }
    const layers = resolved.manifest.layers;
    const diffIds = resolved.config.rootfs.diff_ids;
    if (diffIds.length !== layers.length) {
      throw new FailedPreconditionError(
        `the image config lists ${diffIds.length} diff_ids for ${layers.length} layers`,
        {
          reason: "DIFF_ID_MISMATCH",
        },
      );
    }
    let downloadedBytes = 0;
    // The scratch directory (tmpfs) is memory: a tree there may take what the layers' sizes promise
    // (four times their compressed bytes), no more, whatever they claim to hold. A layer that unpacks
    // to more (a bomb, or just text that compresses well) starts over on disk, with the image's limits.
    const scratchBytes = layers.reduce((sum, l) => sum + l.size, 0) * SCRATCH_EXPANSION;
    const scratch = await deps.scratchDir?.(scratchBytes);
    const diskTree = tree;
    await timed(
      "layers",
      async () => {
        const downloads = downloadAll(
          deps.registry,
          reference,
          layers,
          req.maxConcurrentDownloads || 3,
          signal,
          emit,
          (n) => {
            downloadedBytes += n;
          },
        );
        // Each download is awaited in turn below; a failure of one not reached yet must not go unhandled.
        for (const download of downloads) download.catch(() => undefined);
        if (scratch) {
          tree = await mkdtemp(scratch);
          builder = deps.createBuilder(scratchBytes);
          try {
            await unpack(downloads);
            return;
          } catch (error) {
            if (!(error instanceof ResourceExhaustedError && error.reason === "IMAGE_TOO_LARGE")) throw error;
            await rm(tree, { recursive: true, force: true });
            tree = diskTree;
            builder = deps.createBuilder();
            emit({
              kind: "stage",
              stage: "layers",
              done: false,
              durationMs: 0,
              message: `the layers unpack to more than the ${scratchBytes} bytes allowed in memory: unpacking on disk`,
            });
          }
        }
        await mkdir(tree, { mode: 0o755 });
        await unpack(downloads);
        await Promise.all(downloads); // surface any failure of a download not awaited yet
      },
      `${layers.length} layers`,
    );

    async function unpack(downloads: readonly Promise<string>[]): Promise<void> {
      for (const [index, layer] of layers.entries()) {
        const blob = await downloads[index];
        if (blob === undefined) throw new Error(`no download for layer ${index}`);
        const { diffId } = await builder.applyLayer(tree, blob, signal);
        if (diffId !== diffIds[index]) {
          throw new FailedPreconditionError(
            `layer ${index} (${layer.digest}) unpacks to ${diffId}, not ${diffIds[index]}`,
            {
              reason: "DIFF_ID_MISMATCH",
            },
          );
        }
        emit({
          kind: "layer",
          digest: layer.digest,
          index,
          doneBytes: layer.size,
          totalBytes: layer.size,
          state: "applied",
        });
      }
    }

    const rootfs = join(req.stagingDir, ROOTFS_FILE);
    const t0 = new Map<string, number>();
    const { bytes: rootfsBytes } = await builder.buildRootfs(
      tree,
      rootfs,
      {
        minMib: req.minRootfsMib || 256,
        headroomPercent: req.headroomPercent || 20,
        inodeMarginPercent: req.inodeMarginPercent || 25,
        signal,
      },
      (stage, done) => {
        if (!done) t0.set(stage, performance.now());
        emit({
          kind: "stage",
          stage,
          done,
          durationMs: done ? Math.round(performance.now() - (t0.get(stage) ?? 0)) : 0,
          message: "",
        });
      },
    );
    const workSeedBytes = req.skipWorkSeed
      ? 0
      : (await timed("work-seed", () => builder.buildWorkSeed(tree, join(req.stagingDir, WORK_SEED_FILE), signal)))
          .bytes;
    await timed("verify", async () => {
      await builder.verify(rootfs, signal);
      if (!req.skipWorkSeed) await builder.verify(join(req.stagingDir, WORK_SEED_FILE), signal);
    });
    await rm(tree, { recursive: true, force: true });

    const config = resolved.config.config;
    const result: PullResult = {
      manifestDigest: resolved.manifestDigest,
      configDigest: resolved.manifest.config.digest,
      platform: resolved.platform,
      canonicalReference: reference.canonical,
      rootfsFile: ROOTFS_FILE,
      rootfsBytes,
      workSeedFile: req.skipWorkSeed ? "" : WORK_SEED_FILE,
      workSeedBytes,
      manifestFile: MANIFEST_FILE,
      downloadedBytes,
      entrypoint: config.Entrypoint ?? [],
      cmd: config.Cmd ?? [],
      env: config.Env ?? [],
      user: config.User ?? "",
      workingDir: config.WorkingDir ?? "",
    };
    await writeFile(
      join(req.stagingDir, MANIFEST_FILE),
      JSON.stringify({ ...result, layers: layers.map((l) => ({ digest: l.digest, size: l.size })), diffIds }, null, 2),
      { mode: 0o644 },
    );
    await deps.registry.cache.touch(digests);
    if (deps.builtCache && builtKey !== undefined) {
      const files = [ROOTFS_FILE, ...(req.skipWorkSeed ? [] : [WORK_SEED_FILE]), MANIFEST_FILE];
      await deps.builtCache.keep(builtKey, req.stagingDir, files, result);
    }
    return result;
  } catch (error) {
    await rm(tree, { recursive: true, force: true });
    // Nothing half-done stays in the staging directory (the directory itself is the orchestrator's).
    for (const entry of await readdir(req.stagingDir).catch(() => [])) {
      await rm(join(req.stagingDir, entry), { recursive: true, force: true });
    }
    throw error;
  } finally {
    release?.();
  }
}

/** Starts every layer's download with at most `limit` at a time; the promises resolve to cached blob paths, in layer order. */
function downloadAll(
  registry: RegistryClient,
  reference: ReturnType<typeof parseReference>,
  layers: readonly Descriptor[],
  limit: number,
  signal: AbortSignal,
  emit: (event: PullEvent) => void,
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

/** Digests held by running pulls (counted: two pulls may share a layer). */
export interface Leases {
  /** Holds `digests` until the returned function is called. */
  hold(digests: readonly string[]): () => void;
  held(): ReadonlySet<string>;
}

export function createLeases(): Leases {
  const counts = new Map<string, number>();
  return {
    hold(digests) {
      for (const digest of digests) counts.set(digest, (counts.get(digest) ?? 0) + 1);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        for (const digest of digests) {
          const left = (counts.get(digest) ?? 1) - 1;
          if (left === 0) counts.delete(digest);
          else counts.set(digest, left);
        }
      };
    },
    held: () => new Set(counts.keys()),
  };
}
