/**
 * Manifests, indexes and image configs: media types, and parsers that turn
 * untrusted JSON into checked, typed values (or a FailedPreconditionError /
 * InvalidArgumentError that says what is wrong with the image).
 */
import { FailedPreconditionError, InvalidArgumentError } from "@banger/common/errors";
import type { Reason } from "@banger/common/reasons";
import { isSha256Digest } from "./digest.js";

export const MediaType = {
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerManifestList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerSchema1: "application/vnd.docker.distribution.manifest.v1+json",
  dockerSchema1Signed: "application/vnd.docker.distribution.manifest.v1+prettyjws",
} as const;

/** What banger asks registries for, best first. */
export const MANIFEST_ACCEPT = [
  MediaType.ociIndex,
  MediaType.dockerManifestList,
  MediaType.ociManifest,
  MediaType.dockerManifest,
].join(", ");

/** Layer media types banger can apply (compression is detected from the bytes by the layer code). */
export const LAYER_MEDIA_TYPES: ReadonlySet<string> = new Set([
  "application/vnd.oci.image.layer.v1.tar",
  "application/vnd.oci.image.layer.v1.tar+gzip",
  "application/vnd.oci.image.layer.v1.tar+zstd",
  "application/vnd.oci.image.layer.nondistributable.v1.tar",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
  "application/vnd.docker.image.rootfs.diff.tar",
  "application/vnd.docker.image.rootfs.diff.tar.gzip",
  "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
]);

/** A pointer to content: what it is, its digest and its size. */
export interface Descriptor {
  readonly mediaType: string;
  /** "sha256:<64 hex>". */
  readonly digest: string;
  /** Bytes. */
  readonly size: number;
  readonly annotations?: Readonly<Record<string, string>>;
}

export interface Platform {
  /** "linux". */
  readonly os: string;
  /** OCI architecture name: "amd64", "arm64", "arm", "riscv64"… */
  readonly architecture: string;
  /** "v8", "v7"…; when asking, unset means "any, preferring the usual one". */
  readonly variant?: string;
}

export const DEFAULT_PLATFORM: Platform = { os: "linux", architecture: "amd64" };

export interface IndexEntry extends Descriptor {
  readonly platform?: Platform;
}

/** An OCI image index or a Docker manifest list. */
export interface ImageIndex {
  readonly mediaType: string;
  readonly manifests: readonly IndexEntry[];
}

/** An OCI image manifest or a Docker v2 schema 2 manifest. */
export interface ImageManifest {
  readonly mediaType: string;
  readonly config: Descriptor;
  /** Bottom layer first. */
  readonly layers: readonly Descriptor[];
}

/** The parts of an image config (OCI image-spec names) banger uses; everything validated. */
export interface ImageConfig {
  readonly architecture: string;
  readonly os: string;
  readonly variant?: string;
  readonly rootfs: {
    readonly type: "layers";
    /** sha256 of each uncompressed layer, bottom first. */
    readonly diff_ids: readonly string[];
  };
  readonly config: {
    readonly User?: string;
    readonly Env?: readonly string[];
    readonly Entrypoint?: readonly string[];
    readonly Cmd?: readonly string[];
    readonly WorkingDir?: string;
    readonly Labels?: Readonly<Record<string, string>>;
    readonly StopSignal?: string;
  };
}

/** "linux/amd64", "linux/arm64/v8". */
export function formatPlatform(platform: Platform): string {
  return [platform.os, platform.architecture, ...(platform.variant ? [platform.variant] : [])].join("/");
}

/** Parses "linux/arm64" or "linux/arm/v7" (also "arm64" alone, meaning linux). */
export function parsePlatform(text: string): Platform {
  const parts = text.split("/");
  const valid = parts.every((part) => /^[a-z0-9._-]+$/.test(part));
  if (!valid || parts.length > 3) {
    throw new InvalidArgumentError(`invalid platform ${JSON.stringify(text)}: expected os/architecture[/variant]`, {
      reason: "INVALID_PLATFORM",
    });
  }
  const [first = "", second, variant] = parts;
  if (second === undefined) return { os: "linux", architecture: first };
  return { os: first, architecture: second, ...(variant === undefined ? {} : { variant }) };
}

/** The variant an architecture has when none is written. */
const DEFAULT_VARIANT: Readonly<Record<string, string>> = { arm64: "v8", arm: "v7" };

/**
 * Whether an image for `candidate` serves a request for `wanted`: os and
 * architecture equal; a requested variant equal (an unwritten variant counts
 * as the usual one, e.g. arm64 → v8); no requested variant accepts any.
 */
export function platformMatches(candidate: Platform, wanted: Platform): boolean {
  if (candidate.os !== wanted.os || candidate.architecture !== wanted.architecture) return false;
  if (wanted.variant === undefined) return true;
  const usual = DEFAULT_VARIANT[wanted.architecture];
  return (candidate.variant ?? usual) === (wanted.variant ?? usual);
}

/**
 * The entry of `index` for `wanted` (see platformMatches); without a
 * requested variant, the usual or an unwritten variant wins over others.
 * Attestation and unknown-platform entries never match.
 */
export function selectPlatform(index: ImageIndex, wanted: Platform): IndexEntry | undefined {
  const usual = DEFAULT_VARIANT[wanted.architecture];
  const candidates = index.manifests.filter(
    (entry) => entry.platform !== undefined && platformMatches(entry.platform, wanted),
  );
  if (wanted.variant !== undefined) return candidates[0];
  return candidates.find((entry) => (entry.platform?.variant ?? usual) === usual) ?? candidates[0];
}

/** The platforms an index offers, as "os/arch[/variant]", without attestations and unknowns. */
export function indexPlatforms(index: ImageIndex): string[] {
  const seen = new Set<string>();
  for (const entry of index.manifests) {
    if (entry.platform === undefined) continue;
    seen.add(formatPlatform(entry.platform));
  }
  return [...seen];
}

// ---- parsing untrusted JSON -------------------------------------------------

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

function isObject(value: Json | undefined): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function bad(what: string, why: string, reason: Reason): FailedPreconditionError {
  return new FailedPreconditionError(`${what} is not valid: ${why}`, { reason });
}

/** Parses JSON text; a syntax error becomes `reason`. */
export function parseJson(bytes: Uint8Array, what: string, reason: Reason): Json {
  try {
    return JSON.parse(Buffer.from(bytes).toString("utf8")) as Json;
  } catch (error) {
    throw new FailedPreconditionError(`${what} is not valid JSON`, { reason, cause: error });
  }
}

function optionalString(object: JsonObject, key: string, what: string, reason: Reason): string | undefined {
  const value = object[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") throw bad(what, `"${key}" must be a string`, reason);
  return value;
}

function optionalStrings(object: JsonObject, key: string, what: string, reason: Reason): string[] | undefined {
  const value = object[key];
  if (value === undefined || value === null) return undefined;
  if (!Array.isArray(value) || !value.every((item): item is string => typeof item === "string")) {
    throw bad(what, `"${key}" must be a list of strings`, reason);
  }
  return value;
}

function stringRecord(
  value: Json | undefined,
  key: string,
  what: string,
  reason: Reason,
): Record<string, string> | undefined {
  if (value === undefined || value === null) return undefined;
  if (!isObject(value)) throw bad(what, `"${key}" must be an object of strings`, reason);
  const result: Record<string, string> = {};
  for (const [name, item] of Object.entries(value)) {
    if (typeof item !== "string") throw bad(what, `"${key}.${name}" must be a string`, reason);
    result[name] = item;
  }
  return result;
}

function parseDescriptor(value: Json | undefined, what: string): Descriptor {
  const reason = "INVALID_MANIFEST";
  if (!isObject(value)) throw bad(what, "a descriptor is not an object", reason);
  const { mediaType, digest, size } = value;
  if (typeof mediaType !== "string" || mediaType.length === 0) throw bad(what, "a descriptor has no mediaType", reason);
  if (typeof digest !== "string") throw bad(what, "a descriptor has no digest", reason);
  if (!isSha256Digest(digest)) {
    throw new FailedPreconditionError(
      `${what} uses digest ${JSON.stringify(digest.slice(0, 80))}; banger handles sha256 digests only`,
      { reason: "UNSUPPORTED_DIGEST" },
    );
  }
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
    throw bad(what, `descriptor ${digest} has an invalid size`, reason);
  }
  const annotations = stringRecord(value["annotations"], "annotations", what, reason);
  return { mediaType, digest, size, ...(annotations === undefined ? {} : { annotations }) };
}

function rejectSchema1(what: string): never {
  throw new InvalidArgumentError(
    `${what} is a Docker image manifest schema 1, deprecated since 2017 and not supported; ` +
      "re-push the image with a current docker or skopeo to get a schema 2 or OCI manifest",
    { reason: "SCHEMA1_UNSUPPORTED" },
  );
}

export type ParsedManifest =
  | { readonly kind: "index"; readonly index: ImageIndex }
  | { readonly kind: "manifest"; readonly manifest: ImageManifest };

/**
 * Parses manifest bytes served with `contentType`. The body's own mediaType
 * wins over the header; without either, the shape decides. Schema 1 is
 * rejected with SCHEMA1_UNSUPPORTED, other media types with
 * UNSUPPORTED_MEDIA_TYPE.
 */
export function parseManifest(bytes: Uint8Array, contentType: string | undefined, what: string): ParsedManifest {
  const headerType = contentType?.split(";")[0]?.trim().toLowerCase();
  if (headerType === MediaType.dockerSchema1 || headerType === MediaType.dockerSchema1Signed) rejectSchema1(what);
  const json = parseJson(bytes, what, "INVALID_MANIFEST");
  if (!isObject(json)) throw bad(what, "it is not a JSON object", "INVALID_MANIFEST");
  if (json["schemaVersion"] === 1) rejectSchema1(what);
  if (json["schemaVersion"] !== 2) throw bad(what, "schemaVersion is not 2", "INVALID_MANIFEST");

  const bodyType = json["mediaType"];
  if (bodyType !== undefined && typeof bodyType !== "string")
    throw bad(what, '"mediaType" must be a string', "INVALID_MANIFEST");
  let mediaType = bodyType ?? headerType;
  if (mediaType === undefined || mediaType === "application/json" || mediaType === "") {
    mediaType = Array.isArray(json["manifests"]) ? MediaType.ociIndex : MediaType.ociManifest;
  }

  if (mediaType === MediaType.ociIndex || mediaType === MediaType.dockerManifestList) {
    const list = json["manifests"];
    if (!Array.isArray(list)) throw bad(what, '"manifests" is not a list', "INVALID_MANIFEST");
    const manifests = list.map((item): IndexEntry => {
      const descriptor = parseDescriptor(item, what);
      const platform = isObject(item) ? item["platform"] : undefined;
      if (platform === undefined || platform === null) return descriptor;
      if (!isObject(platform))
        throw bad(what, `the platform of ${descriptor.digest} is not an object`, "INVALID_MANIFEST");
      const { os, architecture } = platform;
      const variant = optionalString(platform, "variant", what, "INVALID_MANIFEST");
      if (typeof os !== "string" || typeof architecture !== "string") {
        throw bad(what, `the platform of ${descriptor.digest} lacks os or architecture`, "INVALID_MANIFEST");
      }
      // Attestations (BuildKit) and other non-images say "unknown/unknown".
      if (os === "unknown" || architecture === "unknown") return descriptor;
      return { ...descriptor, platform: { os, architecture, ...(variant ? { variant } : {}) } };
    });
    return { kind: "index", index: { mediaType, manifests } };
  }

  if (mediaType === MediaType.ociManifest || mediaType === MediaType.dockerManifest) {
    const config = parseDescriptor(json["config"], what);
    if (config.mediaType !== MediaType.ociConfig && config.mediaType !== MediaType.dockerConfig) {
      throw new FailedPreconditionError(
        `${what} is not a container image: its config is ${JSON.stringify(config.mediaType)}`,
        { reason: "NOT_A_CONTAINER_IMAGE" },
      );
    }
    const list = json["layers"];
    if (!Array.isArray(list)) throw bad(what, '"layers" is not a list', "INVALID_MANIFEST");
    const layers = list.map((item) => parseDescriptor(item, what));
    for (const layer of layers) {
      if (!LAYER_MEDIA_TYPES.has(layer.mediaType)) {
        throw new FailedPreconditionError(
          `${what} has layer ${layer.digest} of media type ${JSON.stringify(layer.mediaType)}, which banger cannot apply`,
          { reason: "UNSUPPORTED_MEDIA_TYPE" },
        );
      }
    }
    return { kind: "manifest", manifest: { mediaType, config, layers } };
  }

  throw new FailedPreconditionError(`${what} has media type ${JSON.stringify(mediaType)}, which is not an image`, {
    reason: "UNSUPPORTED_MEDIA_TYPE",
  });
}

/** `object` without its undefined properties (what exactOptionalPropertyTypes wants). */
function withoutUndefined<T extends object>(object: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(object).filter(([, value]) => value !== undefined)) as {
    [K in keyof T]?: Exclude<T[K], undefined>;
  };
}

/** Parses and checks an image config blob. */
export function parseImageConfig(bytes: Uint8Array, what: string): ImageConfig {
  const reason = "INVALID_IMAGE_CONFIG";
  const json = parseJson(bytes, what, reason);
  if (!isObject(json)) throw bad(what, "it is not a JSON object", reason);
  const architecture = optionalString(json, "architecture", what, reason);
  const os = optionalString(json, "os", what, reason);
  if (architecture === undefined || os === undefined) throw bad(what, "it lacks architecture or os", reason);
  const variant = optionalString(json, "variant", what, reason);

  const rootfs = json["rootfs"];
  if (!isObject(rootfs) || rootfs["type"] !== "layers") throw bad(what, 'rootfs.type is not "layers"', reason);
  const diffIds = optionalStrings(rootfs, "diff_ids", what, reason) ?? [];
  for (const id of diffIds) {
    if (!isSha256Digest(id))
      throw bad(what, `diff_id ${JSON.stringify(id.slice(0, 80))} is not a sha256 digest`, reason);
  }

  const section = json["config"];
  if (section !== undefined && section !== null && !isObject(section))
    throw bad(what, '"config" is not an object', reason);
  const inner = isObject(section) ? section : {};
  const fields = {
    User: optionalString(inner, "User", what, reason),
    Env: optionalStrings(inner, "Env", what, reason),
    Entrypoint: optionalStrings(inner, "Entrypoint", what, reason),
    Cmd: optionalStrings(inner, "Cmd", what, reason),
    WorkingDir: optionalString(inner, "WorkingDir", what, reason),
    Labels: stringRecord(inner["Labels"], "Labels", what, reason),
    StopSignal: optionalString(inner, "StopSignal", what, reason),
  };
  return {
    architecture,
    os,
    ...(variant ? { variant } : {}),
    rootfs: { type: "layers", diff_ids: diffIds },
    config: withoutUndefined(fields),
  };
}
