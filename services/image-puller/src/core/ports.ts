/**
 * The image puller's ports, in one place: every host effect and peer that
 * core (pull.ts, tiny.ts) reaches goes through one of these interfaces, and
 * the composition root (main.ts) builds the adapters and passes them in
 * through the rpc/ service; core never constructs one.
 *
 * | port           | adapter                                         | used by                 |
 * |----------------|-------------------------------------------------|-------------------------|
 * | RegistryClient | registry/client.ts (HTTP, auth, verified blobs) | pull.ts, rpc resolve    |
 * | OpenRegistry   | main.ts: a RegistryClient per request's access  | rpc/puller-service.ts   |
 * | BlobCache      | registry/blob-cache.ts                          | the registry client, prune |
 * | BuiltCache     | cache/built-cache.ts                            | pull.ts, prune          |
 * | ImageBuilder   | image-builder.ts (layers/, ext4/)               | pull.ts, tiny.ts        |
 * | ScratchDir     | layers/scratch.ts (tmpfs)                       | pull.ts                 |
 * | Busybox        | host/busybox.ts (the host's static busybox)     | tiny.ts                 |
 *
 * Unit tests pass the real adapters on temporary directories, or scripted ones.
 */
import type { Readable } from "node:stream";
import type { Credentials, ImageReference } from "@banger/common/registry";
import type { Descriptor, ImageConfig, ImageManifest, Platform } from "../registry/manifest.js";

// ---- Registries -------------------------------------------------------------------------------

export interface ResolvedImage {
  readonly reference: ImageReference;
  /** Digest of the chosen platform's image manifest. */
  readonly manifestDigest: string;
  /** Digest of the index (or manifest list) it was chosen from, when there was one. */
  readonly indexDigest?: string;
  readonly manifest: ImageManifest;
  readonly config: ImageConfig;
  /** The platform chosen, "linux/amd64". */
  readonly platform: string;
  /** Every platform the reference offers; just `platform` for a single-platform image. */
  readonly platforms: readonly string[];
}

export interface FetchBlobOptions {
  readonly signal: AbortSignal;
  /** Bytes downloaded so far; not called when the blob was already cached. */
  readonly onProgress?: (doneBytes: number) => void;
  /** The blob's bytes can be read as they are written, before it is verified; not called when it was already cached. */
  readonly onWriting?: (blob: GrowingBlob) => void;
}

/**
 * A blob being written into the cache (registry/growing-blob.ts): what is
 * read from it is not verified until `done` resolves.
 */
export interface GrowingBlob {
  /** Its first `bytes` bytes (fewer when it is shorter), once written; the download's error when it fails first. */
  head(bytes: number): Promise<Buffer>;
  /** All its bytes as they are written, ending once it is verified, failing with the download's error. */
  stream(): Readable;
  /** Its path in the cache once verified; the download's error otherwise. */
  readonly done: Promise<string>;
}

export interface RegistryClient {
  readonly cache: BlobCache;
  /**
   * The manifest and config of `reference` for `platform` (chosen from an
   * index or manifest list; a single-platform image must match it).
   */
  resolve(reference: ImageReference, platform: Platform, signal: AbortSignal): Promise<ResolvedImage>;
  /**
   * Path of blob `descriptor` of `reference`'s repository in the cache,
   * downloaded and verified first unless already there. Concurrent calls for
   * one digest share a single download.
   */
  fetchBlob(reference: ImageReference, descriptor: Descriptor, options: FetchBlobOptions): Promise<string>;
}

/** What one request may reach: the registries it allows plain HTTP, and the credentials its caller resolved. */
export interface RegistryAccess {
  /** Hosts ("host[:port]", or "host" for every port) reached over plain HTTP; loopback always is. */
  readonly insecureRegistries: readonly string[];
  /** By registry host[:port]; a registry found here does not consult the docker config. */
  readonly credentials: ReadonlyMap<string, Credentials>;
}

/** A registry client for one request's access, over the puller's one blob cache. */
export type OpenRegistry = (access: RegistryAccess) => RegistryClient;

/** A blob's bytes as they arrive: a web stream (a fetch body), any async iterable, or chunks at hand. */
export type BlobBody = ReadableStream<Uint8Array> | AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

/** The puller's content-addressed blob cache of verified blobs (layers, configs, manifests). */
export interface BlobCache {
  /** The cache's root directory. */
  readonly dir: string;
  /** Where the blob `digest` is (or would be) stored. Throws for a malformed digest. */
  path(digest: string): string;
  /** Whether the verified blob `digest` is in the cache. */
  has(digest: string): Promise<boolean>;
  /**
   * Stores `body` as blob `digest`, which must be exactly `size` bytes, and
   * returns its path. `onProgress` gets the bytes written so far. Throws
   * DigestMismatchError (DIGEST_MISMATCH) when the bytes hash differently or
   * run past `size`, UnavailableError (BLOB_TRUNCATED) when they end early,
   * and whatever the body throws; in every case the temporary file is gone
   * and nothing is under the final name. When the blob is already there the
   * body is cancelled unread. `onWriting` gets the blob as it is written
   * (not called when it was already there).
   */
  put(
    digest: string,
    size: number,
    body: BlobBody,
    onProgress?: (doneBytes: number) => void,
    onWriting?: (blob: GrowingBlob) => void,
  ): Promise<string>;
  /**
   * The bytes of a small cached blob (manifests, configs), hashed again on
   * the way: a blob that no longer matches its digest is removed and
   * DIGEST_MISMATCH thrown.
   */
  read(digest: string, maxBytes?: number): Promise<Buffer>;
  /** Removes temporary files of puts that are not running any more; returns how many. */
  sweep(): Promise<number>;
  /** Marks blobs as used now (their mtime), for prune; blobs not in the cache are ignored. */
  touch(digests: readonly string[]): Promise<void>;
  /**
   * Removes blobs last used before `before` whose digest is not in `inUse`,
   * and temporary files of puts that are not running; returns what it freed.
   */
  prune(before: Date, inUse: ReadonlySet<string>): Promise<{ removed: number; freedBytes: number }>;
}

// ---- Built images ---------------------------------------------------------------------------------

/** Images built before: a re-pull of the same image with the same settings copies them. */
export interface BuildKey {
  readonly manifestDigest: string;
  readonly minRootfsMib: number;
  readonly headroomPercent: number;
  readonly inodeMarginPercent: number;
  readonly skipWorkSeed: boolean;
}

export interface BuiltCache {
  /** The entry name for an image built with these settings. */
  key(build: BuildKey): string;
  /**
   * Copies entry `key` into `stagingDir` and returns its manifest (the
   * PullResult stored with it), or undefined when there is no complete entry.
   * Waits for a keep of the same key still running.
   */
  restore(key: string, stagingDir: string): Promise<unknown>;
  /**
   * Starts keeping `files` (names inside `stagingDir`, opened now) and
   * `result` under `key`; returns once the files are open. Best effort: a
   * failure (no room, say) only means the next pull builds again.
   */
  keep(key: string, stagingDir: string, files: readonly string[], result: unknown): Promise<void>;
  /** Resolves when no keep is running (tests, shutdown). */
  settled(): Promise<void>;
  /** Removes entries not used since `before` (never one being kept or restored). */
  prune(before: Date): Promise<{ removed: number; freedBytes: number }>;
}

// ---- Building -------------------------------------------------------------------------------------

/** Turns layers into a tree and the tree into ext4 images (layers/ and ext4/ implement it). */
export interface ImageBuilder {
  /**
   * Applies the compressed layer (a cached blob's path, or a blob as it
   * downloads) onto the tree at `treeDir`; returns the uncompressed digest.
   */
  applyLayer(treeDir: string, blob: string | GrowingBlob, signal: AbortSignal): Promise<{ diffId: string }>;
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

/**
 * Where an unpacked tree goes while the images are built: a mkdtemp prefix in a
 * fast scratch directory (tmpfs) when it has room for `neededBytes`, else
 * undefined (the tree then goes beside the staging directory).
 */
export type ScratchDir = (neededBytes: number) => Promise<string | undefined>;

/** The static busybox the built-in image `tiny` is made of. */
export interface Busybox {
  /** Where it is, as the stage's message names it. */
  readonly path: string;
  /** Its bytes; BUSYBOX_NOT_STATIC when it is not a static executable. */
  read(): Promise<Buffer>;
  /** Its applets' paths ("/bin/ls", "/sbin/ip", …), one a line, as `busybox --list-full` prints them. */
  applets(signal: AbortSignal): Promise<readonly string[]>;
}
