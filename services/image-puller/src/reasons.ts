/**
 * The error reasons only the image puller throws. Common's and the shared ones
 * are in @banger/common/reasons; this list joins them in this service's
 * build, so a `reason:` outside all three fails `tsc`.
 */
import { reasonConstants } from "@banger/common/reasons";

declare module "@banger/common/reasons" {
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type -- merging adds the list's names as keys
  interface ServiceReasons extends Record<PullerReason, true> {}
}

export const PULLER_REASONS = [
  "BLOB_NOT_CACHED",
  "BLOB_NOT_FOUND",
  "BLOB_TOO_LARGE",
  "BLOB_TRUNCATED",
  "BODY_TOO_LARGE",
  "DIFF_ID_MISMATCH",
  "DIGEST_MISMATCH",
  "HOSTILE_LAYER",
  "IMAGE_TOO_LARGE",
  "IMAGE_TOO_MANY_ENTRIES",
  "INSECURE_REDIRECT",
  "INSECURE_TOKEN_REALM",
  "INVALID_CREDENTIALS",
  "INVALID_DESCRIPTOR",
  "INVALID_IMAGE_CONFIG",
  "INVALID_MANIFEST",
  "INVALID_PLATFORM",
  "INVALID_STAGING_DIR",
  "MALFORMED_LAYER",
  "MANIFEST_NOT_FOUND",
  "NOT_A_CONTAINER_IMAGE",
  "PLATFORM_NOT_FOUND",
  "REGISTRY_ERROR",
  "REGISTRY_RATE_LIMITED",
  "REGISTRY_UNAUTHORIZED",
  "SCHEMA1_UNSUPPORTED",
  "SCRATCH_SPACE_LOW",
  "STAGING_NOT_EMPTY",
  "STAGING_OUTSIDE_STATE_DIR",
  "UNSUPPORTED_DIGEST",
  "UNSUPPORTED_MEDIA_TYPE",
] as const;
export type PullerReason = (typeof PULLER_REASONS)[number];
export const PullerReason = reasonConstants(PULLER_REASONS);
