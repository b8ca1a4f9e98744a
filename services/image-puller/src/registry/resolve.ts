/**
 * A reference resolved to one platform's manifest and config: indexes
 * followed to the platform asked for, every manifest checked against its
 * digest (sha256 of the exact bytes, equal to the requested digest or the
 * index entry's, and to Docker-Content-Digest when the registry sends it),
 * manifests and configs cached by digest, so resolving a digest-pinned
 * reference whose content is cached makes no request at all.
 */
import { FailedPreconditionError, NotFoundError } from "@banger/common/errors";
import { abortError, type ImageReference } from "@banger/common/registry";
import type { ResolvedImage } from "../core/ports.js";
import { fetchBlob, pullScope, type ClientContext } from "./blobs.js";
import { DigestMismatchError, sha256Digest } from "./digest.js";
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
import { readLimited, statusError } from "./responses.js";

/** Manifests larger than this are refused (distribution's own limit is 4 MiB). */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** Image configs larger than this are refused. */
const MAX_CONFIG_BYTES = 16 * 1024 * 1024;
/** Indexes pointing at indexes are followed this deep. */
const MAX_INDEX_DEPTH = 3;

interface FetchedManifest {
  readonly digest: string;
  readonly parsed: ParsedManifest;
}

/** Manifest `target` (tag or digest), from the cache when its digest is known and there, checked against `expected`. */
async function fetchManifest(
  ctx: ClientContext,
  reference: ImageReference,
  target: string,
  expected: Descriptor | { readonly digest: string } | undefined,
  signal: AbortSignal,
): Promise<FetchedManifest> {
  const { cache } = ctx;
  const what = `manifest ${target} of ${reference.registry}/${reference.repository}`;
  if (expected !== undefined && (await cache.has(expected.digest))) {
    const bytes = await cache.read(expected.digest, MAX_MANIFEST_BYTES);
    return { digest: expected.digest, parsed: parseManifest(bytes, undefined, what) };
  }
  const response = await ctx.transport.request(reference.registry, {
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
  checkManifestDigest(what, bytes, digest, expected, response.headers.get("docker-content-digest"));
  await cache.put(digest, bytes.byteLength, [bytes]);
  return { digest, parsed };
}

/** The manifest's bytes are what was asked for: the index entry's size and digest, and the registry's own word. */
function checkManifestDigest(
  what: string,
  bytes: Uint8Array,
  digest: string,
  expected: Descriptor | { readonly digest: string } | undefined,
  announced: string | null,
): void {
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
  if (announced !== null && announced.startsWith("sha256:") && announced !== digest) {
    throw new DigestMismatchError(
      `${what} hashes to ${digest}, but the registry says it is ${announced}`,
      announced,
      digest,
    );
  }
}

interface ChosenManifest {
  readonly digest: string;
  readonly manifest: ImageManifest;
  readonly indexDigest?: string | undefined;
  /** The platform the index entry named; undefined when there was no index, or it named none. */
  readonly chosen?: string | undefined;
  readonly platforms?: string[] | undefined;
}

/** The reference's manifest, indexes followed (at most MAX_INDEX_DEPTH) to the entry for `platform`. */
async function followIndexes(
  ctx: ClientContext,
  reference: ImageReference,
  platform: Platform,
  signal: AbortSignal,
): Promise<ChosenManifest> {
  const target = reference.digest ?? reference.tag ?? "latest";
  let current = await fetchManifest(
    ctx,
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
    current = await fetchManifest(ctx, reference, entry.digest, entry, signal);
  }
  return { digest: current.digest, manifest: current.parsed.manifest, indexDigest, chosen, platforms };
}

/** The manifest's config, fetched into the cache, parsed, and matching the manifest's layers. */
async function readConfig(
  ctx: ClientContext,
  reference: ImageReference,
  manifest: ImageManifest,
  signal: AbortSignal,
): Promise<ImageConfig> {
  if (manifest.config.size > MAX_CONFIG_BYTES) {
    throw new FailedPreconditionError(
      `${reference.canonical}: its config is ${manifest.config.size} bytes, more than the ${MAX_CONFIG_BYTES} allowed`,
      { reason: "INVALID_IMAGE_CONFIG" },
    );
  }
  await fetchBlob(ctx, reference, manifest.config, { signal });
  const config = parseImageConfig(
    await ctx.cache.read(manifest.config.digest, MAX_CONFIG_BYTES),
    `config ${manifest.config.digest} of ${reference.canonical}`,
  );
  if (config.rootfs.diff_ids.length !== manifest.layers.length) {
    throw new FailedPreconditionError(
      `${reference.canonical}: the manifest has ${manifest.layers.length} layers but the config lists ${config.rootfs.diff_ids.length} diff_ids`,
      { reason: "INVALID_IMAGE_CONFIG" },
    );
  }
  return config;
}

/** See RegistryClient.resolve. */
export async function resolveImage(
  ctx: ClientContext,
  reference: ImageReference,
  platform: Platform,
  signal: AbortSignal,
): Promise<ResolvedImage> {
  const { digest, manifest, indexDigest, platforms, ...rest } = await followIndexes(ctx, reference, platform, signal);
  let chosen = rest.chosen;
  const config = await readConfig(ctx, reference, manifest, signal);

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
    manifestDigest: digest,
    ...(indexDigest === undefined ? {} : { indexDigest }),
    manifest,
    config,
    platform: chosen,
    platforms: platforms ?? [chosen],
  };
}
