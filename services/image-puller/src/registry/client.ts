/**
 * The registry client: resolves a reference to one platform's manifest and
 * config, and fetches blobs into the verified blob cache.
 *
 * Everything fetched is checked against a digest before use: manifests
 * (sha256 of the exact bytes, equal to the requested digest or the index
 * entry's, and to Docker-Content-Digest when the registry sends it), configs
 * and layers (hashed while written to the cache). Manifests and configs are
 * cached by digest too, so resolving a digest-pinned reference whose content
 * is cached makes no request at all, and a cached blob is never fetched again.
 */
import { stat } from "node:fs/promises";
import { FailedPreconditionError, NotFoundError } from "@banger/common/errors";
import type { BlobBody, BlobCache } from "./blob-cache.js";
import {
  abortError,
  createProcessCredentialHelper,
  findCredentials,
  hostOfKey,
  type CredentialHelper,
  type Credentials,
  type ImageReference,
} from "@banger/common/registry";
import { blobTruncated, DigestMismatchError, sha256Digest } from "./digest.js";
import {
  formatPlatform,
  indexPlatforms,
  MANIFEST_ACCEPT,
  parseImageConfig,
  parseManifest,
  platformMatches,
  selectPlatform,
  type Descriptor,
  type ImageConfig,
  type ImageManifest,
  type ParsedManifest,
  type Platform,
} from "./manifest.js";
import {
  createTransport,
  raceAbort,
  readLimited,
  statusError,
  type FetchFunction,
  type Transport,
} from "./transport.js";

/** Manifests larger than this are refused (distribution's own limit is 4 MiB). */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** Image configs larger than this are refused. */
const MAX_CONFIG_BYTES = 16 * 1024 * 1024;
/** Indexes pointing at indexes are followed this deep. */
const MAX_INDEX_DEPTH = 3;

export interface RegistryClientOptions {
  /** Where verified blobs (layers, configs, manifests) are kept. */
  readonly cache: BlobCache;
  /** Hosts ("host[:port]", or "host" for every port) reached over plain HTTP; loopback always is. */
  readonly insecureRegistries: readonly string[];
  /** Docker config.json with credentials; none when unset. */
  readonly dockerConfigPath?: string;
  /**
   * Credentials the caller resolved, by registry host[:port]; a registry
   * found here does not consult the docker config.
   */
  readonly credentials?: ReadonlyMap<string, Credentials>;
  /** Runs `docker-credential-<name> get`; default: the real programs on PATH. */
  readonly credentialHelper?: CredentialHelper;
  /** Default: the global fetch. */
  readonly fetch?: FetchFunction;
}

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

interface FetchedManifest {
  readonly digest: string;
  readonly parsed: ParsedManifest;
}

interface SharedDownload {
  readonly promise: Promise<string>;
  readonly controller: AbortController;
  readonly listeners: Set<(doneBytes: number) => void>;
  waiters: number;
}

function pullScope(reference: ImageReference): string {
  return `repository:${reference.repository}:pull`;
}

/** A fetch body whose failures say what was being downloaded. */
async function* guardedBody(
  body: ReadableStream<Uint8Array> | null,
  descriptor: Descriptor,
  signal: AbortSignal,
): AsyncGenerator<Uint8Array> {
  if (body === null) return;
  const reader = body.getReader();
  let done = 0;
  let finished = false;
  try {
    for (;;) {
      let next: Awaited<ReturnType<typeof reader.read>>;
      try {
        next = await reader.read();
      } catch (error) {
        if (signal.aborted) throw abortError(signal);
        throw blobTruncated(descriptor.digest, done, descriptor.size, error);
      }
      if (next.done) {
        finished = true;
        return;
      }
      done += next.value.byteLength;
      yield next.value;
    }
  } finally {
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

export function createRegistryClient(options: RegistryClientOptions): RegistryClient {
  const { cache } = options;
  const helper = options.credentialHelper ?? createProcessCredentialHelper();
  const transport: Transport = createTransport({
    insecureRegistries: options.insecureRegistries,
    fetch: options.fetch ?? globalThis.fetch,
    credentials: async (registry, signal) =>
      options.credentials?.get(hostOfKey(registry)) ??
      (await findCredentials(options.dockerConfigPath, registry, helper, signal)),
  });
  const downloads = new Map<string, SharedDownload>();

  async function fetchManifest(
    reference: ImageReference,
    target: string,
    expected: Descriptor | { readonly digest: string } | undefined,
    signal: AbortSignal,
  ): Promise<FetchedManifest> {
    const what = `manifest ${target} of ${reference.registry}/${reference.repository}`;
    if (expected !== undefined && (await cache.has(expected.digest))) {
      const bytes = await cache.read(expected.digest, MAX_MANIFEST_BYTES);
      return { digest: expected.digest, parsed: parseManifest(bytes, undefined, what) };
    }
    const response = await transport.request(reference.registry, {
      method: "GET",
      path: `/v2/${reference.repository}/manifests/${target}`,
      accept: MANIFEST_ACCEPT,
      scope: pullScope(reference),
      signal,
    });
    if (!response.ok) {
      throw await statusError(response, {
        registry: reference.registry,
        repository: reference.repository,
        kind: "manifest",
        target,
      });
    }
    let bytes: Uint8Array;
    try {
      bytes = await readLimited(response, MAX_MANIFEST_BYTES);
    } catch (error) {
      if (signal.aborted) throw abortError(signal);
      throw error;
    }
    const parsed = parseManifest(bytes, response.headers.get("content-type") ?? undefined, what);
    const digest = sha256Digest(bytes);
    if (expected !== undefined && "size" in expected && bytes.byteLength !== expected.size) {
      throw new DigestMismatchError(
        `${what} is ${bytes.byteLength} bytes, not the ${expected.size} its index says`,
        expected.digest,
        digest,
      );
    }
    if (expected !== undefined && digest !== expected.digest) {
      throw new DigestMismatchError(`${what} hashes to ${digest}, not the requested digest`, expected.digest, digest);
    }
    const announced = response.headers.get("docker-content-digest");
    if (announced !== null && announced.startsWith("sha256:") && announced !== digest) {
      throw new DigestMismatchError(
        `${what} hashes to ${digest}, but the registry says it is ${announced}`,
        announced,
        digest,
      );
    }
    await cache.put(digest, bytes.byteLength, [bytes]);
    return { digest, parsed };
  }

  async function download(
    reference: ImageReference,
    descriptor: Descriptor,
    signal: AbortSignal,
    onProgress: (doneBytes: number) => void,
  ): Promise<string> {
    const response = await transport.request(reference.registry, {
      method: "GET",
      path: `/v2/${reference.repository}/blobs/${descriptor.digest}`,
      scope: pullScope(reference),
      signal,
    });
    if (!response.ok) {
      throw await statusError(response, {
        registry: reference.registry,
        repository: reference.repository,
        kind: "blob",
        target: descriptor.digest,
      });
    }
    const announced = response.headers.get("content-length");
    if (announced !== null && Number(announced) > descriptor.size) {
      await response.body?.cancel().catch(() => {});
      throw new DigestMismatchError(
        `blob ${descriptor.digest} is announced as ${announced} bytes, more than the ${descriptor.size} its descriptor says`,
        descriptor.digest,
      );
    }
    const body: BlobBody = guardedBody(response.body, descriptor, signal);
    return cache.put(descriptor.digest, descriptor.size, body, onProgress);
  }

  async function cachedPath(descriptor: Descriptor): Promise<string | undefined> {
    const path = cache.path(descriptor.digest);
    try {
      const info = await stat(path);
      if (!info.isFile()) return undefined;
      if (info.size !== descriptor.size) {
        throw new DigestMismatchError(
          `cached blob ${descriptor.digest} is ${info.size} bytes, but its descriptor says ${descriptor.size}`,
          descriptor.digest,
        );
      }
      return path;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
  }

  async function fetchBlob(
    reference: ImageReference,
    descriptor: Descriptor,
    options: FetchBlobOptions,
  ): Promise<string> {
    const { signal, onProgress } = options;
    if (signal.aborted) throw abortError(signal);
    const cached = await cachedPath(descriptor);
    if (cached !== undefined) return cached;

    // Keyed by size too: a descriptor that lies about it must not share another's download.
    const key = `${descriptor.digest}/${descriptor.size}`;
    let shared = downloads.get(key);
    if (shared === undefined || shared.controller.signal.aborted) {
      const controller = new AbortController();
      const listeners = new Set<(doneBytes: number) => void>();
      const promise = download(reference, descriptor, controller.signal, (doneBytes) => {
        for (const listener of listeners) listener(doneBytes);
      }).finally(() => {
        if (downloads.get(key) === entry) downloads.delete(key);
      });
      promise.catch(() => {}); // each waiter gets the error through raceAbort
      const entry: SharedDownload = { promise, controller, listeners, waiters: 0 };
      downloads.set(key, entry);
      shared = entry;
    }
    const job = shared;
    job.waiters += 1;
    if (onProgress !== undefined) job.listeners.add(onProgress);
    try {
      return await raceAbort(job.promise, signal);
    } finally {
      if (onProgress !== undefined) job.listeners.delete(onProgress);
      job.waiters -= 1;
      // The last one waiting gave up: stop downloading.
      if (job.waiters === 0 && signal.aborted) job.controller.abort(signal.reason);
    }
  }

  async function resolve(reference: ImageReference, platform: Platform, signal: AbortSignal): Promise<ResolvedImage> {
    const target = reference.digest ?? reference.tag ?? "latest";
    let current = await fetchManifest(
      reference,
      target,
      reference.digest === undefined ? undefined : { digest: reference.digest },
      signal,
    );
    let indexDigest: string | undefined;
    let chosen: string | undefined;
    let platforms: string[] | undefined;
    for (let depth = 0; current.parsed.kind === "index"; depth += 1) {
      if (depth >= MAX_INDEX_DEPTH) {
        throw new FailedPreconditionError(`${reference.canonical}: indexes nested more than ${MAX_INDEX_DEPTH} deep`, {
          reason: "INVALID_MANIFEST",
        });
      }
      const index = current.parsed.index;
      platforms ??= indexPlatforms(index);
      const entry = selectPlatform(index, platform);
      if (entry === undefined) {
        const offered = indexPlatforms(index);
        throw new NotFoundError(
          `${reference.canonical} has no image for ${formatPlatform(platform)}; it offers ${offered.length > 0 ? offered.join(", ") : "no platforms"}`,
          { reason: "PLATFORM_NOT_FOUND" },
        );
      }
      indexDigest ??= current.digest;
      chosen = entry.platform === undefined ? undefined : formatPlatform(entry.platform);
      current = await fetchManifest(reference, entry.digest, entry, signal);
    }
    const manifest = current.parsed.manifest;

    if (manifest.config.size > MAX_CONFIG_BYTES) {
      throw new FailedPreconditionError(
        `${reference.canonical}: its config is ${manifest.config.size} bytes, more than the ${MAX_CONFIG_BYTES} allowed`,
        { reason: "INVALID_IMAGE_CONFIG" },
      );
    }
    await fetchBlob(reference, manifest.config, { signal });
    const config = parseImageConfig(
      await cache.read(manifest.config.digest, MAX_CONFIG_BYTES),
      `config ${manifest.config.digest} of ${reference.canonical}`,
    );
    if (config.rootfs.diff_ids.length !== manifest.layers.length) {
      throw new FailedPreconditionError(
        `${reference.canonical}: the manifest has ${manifest.layers.length} layers but the config lists ${config.rootfs.diff_ids.length} diff_ids`,
        { reason: "INVALID_IMAGE_CONFIG" },
      );
    }

    if (chosen === undefined) {
      const own: Platform = {
        os: config.os,
        architecture: config.architecture,
        ...(config.variant === undefined ? {} : { variant: config.variant }),
      };
      if (indexDigest === undefined && !platformMatches(own, platform)) {
        throw new NotFoundError(
          `${reference.canonical} is an image for ${formatPlatform(own)} only, not ${formatPlatform(platform)}`,
          { reason: "PLATFORM_NOT_FOUND" },
        );
      }
      chosen = formatPlatform(own);
    }
    return {
      reference,
      manifestDigest: current.digest,
      ...(indexDigest === undefined ? {} : { indexDigest }),
      manifest,
      config,
      platform: chosen,
      platforms: platforms ?? [chosen],
    };
  }

  return { cache, resolve, fetchBlob };
}
