/** An image to the rest of the orchestrator: its view, its files, the checks of its name, what pulls use. */
import { InvalidArgumentError, type Credentials } from "@banger/common";
import { IMAGE_FILES } from "@banger/common/layout";
import type { ImageRecord } from "../../store/index.js";

/** An image with the names of the VMs that use it, sorted. */
export interface ImageView extends ImageRecord {
  readonly usedBy: readonly string[];
}

/** The owner's credentials for a registry host (docker config, credential helpers), or undefined. */
export type CredentialLookup = (registry: string, signal: AbortSignal) => Promise<Credentials | undefined>;

/** What a pull uses when the request leaves it unset: from the config file. */
export interface PullDefaults {
  readonly insecureRegistries: readonly string[];
  readonly minRootfsMib: number;
}

export interface AdoptRequest {
  readonly name: string;
  readonly rootfsPath: string;
  readonly workSeedPath?: string;
  readonly defaultKernel: string | null;
  readonly source: "registered" | "promoted";
  readonly signal?: AbortSignal;
}

/** An image's root filesystem and work seed inside its directory (see the layout's imageFiles). */
export const ROOTFS_FILE = IMAGE_FILES.rootfs;
export const WORK_SEED_FILE = IMAGE_FILES.workSeed;

const IMAGE_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;

export function validImageName(name: string): string {
  if (!IMAGE_NAME.test(name) || name.startsWith(".")) {
    throw new InvalidArgumentError(`image name must match ${IMAGE_NAME.source}`, { reason: "INVALID_IMAGE_NAME" });
  }
  return name;
}

/** "docker.io/library/debian:bookworm" → "debian"; "127.0.0.1:5000/x/y@sha256:…" → "y". */
export function imageNameFromReference(reference: string): string {
  const withoutDigest = reference.split("@")[0] ?? reference;
  const last = withoutDigest.split("/").at(-1) ?? withoutDigest;
  return last.split(":")[0] ?? last;
}
