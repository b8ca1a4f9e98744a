/**
 * The registry side of the image puller: references, the registry client
 * (auth, manifests, platform selection, verified blob downloads) and the
 * content-addressed blob cache. Proto-free; the rpc/ edge maps its errors.
 */
export { createBlobCache } from "./blob-cache.js";
export { createRegistryClient, type RegistryClientOptions } from "./client.js";
// References and credentials live in @banger/common: the orchestrator resolves the owner's credentials.
export {
  createProcessCredentialHelper,
  defaultDockerConfigPath,
  DOCKER_HUB_DOMAIN,
  DOCKER_HUB_REGISTRY,
  DOCKER_HUB_SERVER_URL,
  hostOfKey,
  parseReference,
  type CredentialHelper,
  type Credentials,
  type HelperCredentials,
  type ImageReference,
  type ProcessCredentialHelperOptions,
} from "@banger/common/registry";
export { DigestMismatchError, isSha256Digest } from "./digest.js";
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
