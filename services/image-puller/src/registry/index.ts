/**
 * The registry side of the image puller: references, the registry client
 * (auth, manifests, platform selection, verified blob downloads) and the
 * content-addressed blob cache. Proto-free; the rpc/ edge maps its errors.
 */
export { createBlobCache, type BlobBody, type BlobCache } from "./blob-cache.js";
export {
  createRegistryClient,
  type FetchBlobOptions,
  type RegistryClient,
  type RegistryClientOptions,
  type ResolvedImage,
} from "./client.js";
export {
  defaultDockerConfigPath,
  DOCKER_HUB_SERVER_URL,
  hostOfKey,
  type CredentialHelper,
  type Credentials,
  type HelperCredentials,
} from "./credentials.js";
export { DigestMismatchError, isSha256Digest } from "./digest.js";
export { createProcessCredentialHelper, type ProcessCredentialHelperOptions } from "./host/credential-helper.js";
export {
  DEFAULT_PLATFORM,
  formatPlatform,
  LAYER_MEDIA_TYPES,
  MediaType,
  parsePlatform,
  platformMatches,
  type Descriptor,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
  type IndexEntry,
  type Platform,
} from "./manifest.js";
export { DOCKER_HUB_DOMAIN, DOCKER_HUB_REGISTRY, parseReference, type ImageReference } from "./reference.js";
