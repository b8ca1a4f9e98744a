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
} from "@banger/common/registry";
import type { BlobCache, RegistryClient } from "../core/ports.js";
import { fetchBlob, type ClientContext } from "./blobs.js";
import type { FetchFunction } from "./http.js";
import { resolveImage } from "./resolve.js";
import { createTransport } from "./transport.js";

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
