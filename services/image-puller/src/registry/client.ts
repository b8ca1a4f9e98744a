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
 * resolve.ts resolves, blobs.ts fetches; this builds one client of both.
 */
import {
  createProcessCredentialHelper,
  findCredentials,
  hostOfKey,
  type CredentialHelper,
  type Credentials,
  type ImageReference,
} from "@banger/common/registry";
import type { BlobCache } from "./blob-cache.js";
import { fetchBlob, type ClientContext, type FetchBlobOptions } from "./blobs.js";
import type { FetchFunction } from "./http.js";
import type { Descriptor, Platform } from "./manifest.js";
import { resolveImage, type ResolvedImage } from "./resolve.js";
import { createTransport } from "./transport.js";

export type { FetchBlobOptions } from "./blobs.js";
export type { ResolvedImage } from "./resolve.js";

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

export function createRegistryClient(options: RegistryClientOptions): RegistryClient {
  const { cache } = options;
  const helper = options.credentialHelper ?? createProcessCredentialHelper();
  const ctx: ClientContext = {
    cache,
    transport: createTransport({
      insecureRegistries: options.insecureRegistries,
      fetch: options.fetch ?? globalThis.fetch,
      credentials: async (registry, signal) =>
        options.credentials?.get(hostOfKey(registry)) ??
        (await findCredentials(options.dockerConfigPath, registry, helper, signal)),
    }),
    downloads: new Map(),
  };
  return {
    cache,
    resolve: (reference, platform, signal) => resolveImage(ctx, reference, platform, signal),
    fetchBlob: (reference, descriptor, fetchOptions) => fetchBlob(ctx, reference, descriptor, fetchOptions),
  };
}
