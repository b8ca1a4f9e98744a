/** What banger can make on first use: the catalog of friendly names and the built-in image `tiny`. */
import { UnavailableError } from "@banger/common";
import { SharedReason } from "@banger/common/reasons";

/** A friendly name banger knows how to pull. */
export interface CatalogEntry {
  readonly name: string;
  readonly reference: string;
  readonly defaultKernel: string;
  readonly description: string;
}

/** The built-in catalog: `vm create --image debian` pulls on first use. */
export const CATALOG: readonly CatalogEntry[] = [
  {
    name: "alpine",
    reference: "docker.io/library/alpine:3.20",
    defaultKernel: "",
    description: "Alpine Linux 3.20 (musl, busybox, apk)",
  },
  {
    name: "debian",
    reference: "docker.io/library/debian:bookworm",
    defaultKernel: "",
    description: "Debian 12 bookworm",
  },
  {
    name: "ubuntu",
    reference: "docker.io/library/ubuntu:24.04",
    defaultKernel: "",
    description: "Ubuntu 24.04 LTS",
  },
];

/** banger's built-in image: the host's static busybox, built by the puller with no download. */
export const TINY_IMAGE = "tiny";

/** Images banger builds itself, with no registry. */
export const BUILTIN_IMAGES: readonly { readonly name: string; readonly description: string }[] = [
  {
    name: TINY_IMAGE,
    description: "the host's static busybox and banger's guest kit; built locally, no download",
  },
];

/** Whether `name` is one banger can make on first use: a catalog name or a built-in image. */
export function isKnownImageName(name: string): boolean {
  return CATALOG.some((entry) => entry.name === name) || BUILTIN_IMAGES.some((entry) => entry.name === name);
}

/**
 * Whether a pull failed because no registry could be reached at all (no
 * route, no name resolution, refused, reset): the only failure after which
 * the built-in image may stand in for the default one. A registry that
 * answers (unauthorized, not found, rate limited, a bad manifest) or a puller
 * that is down is a failure to report, not a reason to boot something else.
 */
export function registryUnreachable(error: unknown): error is UnavailableError {
  return error instanceof UnavailableError && error.reason === SharedReason.REGISTRY_UNREACHABLE;
}
