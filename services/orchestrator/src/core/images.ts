/**
 * Images: pulled through the image puller into a staging directory, then
 * published under a short per-name lock (re-check the name, atomic rename
 * into place, insert the row). Different images pull in parallel; two pulls
 * racing for one name give one winner and IMAGE_NAME_TAKEN for the other.
 */
import { mkdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  type Logger,
  type ServiceIdentity,
} from "@banger/common";
import type { Kysely } from "kysely";
import {
  deleteImage,
  getImage,
  insertImage,
  listImages,
  listImageUsers,
  type Database,
  type ImageConfig,
  type ImageRecord,
  type JsonObject,
  type OperationRecord,
} from "../store/index.js";
import type { CallScope } from "./call-scope.js";
import type { Operations } from "./operations.js";
import { createSerialLock } from "./serial-lock.js";

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

export interface PullRequestPlain {
  readonly reference: string;
  readonly stagingDir: string;
  readonly platform: string;
  readonly minRootfsMib: number;
  /** Registry hosts reached over plain HTTP (the config's `registries.insecure`). */
  readonly insecureRegistries: readonly string[];
}

/** What a pull uses when the request leaves it unset: from the config file. */
export interface PullDefaults {
  readonly insecureRegistries: readonly string[];
  readonly minRootfsMib: number;
}

export type PullEvent =
  | {
      readonly kind: "stage";
      readonly name: string;
      readonly done: boolean;
      readonly message: string;
    }
  | {
      readonly kind: "layer";
      readonly index: number;
      readonly digest: string;
      readonly doneBytes: number;
      readonly totalBytes: number;
      /** "waiting", "downloading", "cached", "downloaded", "applied". */
      readonly state: string;
    };

export interface PullOutcome {
  readonly manifestDigest: string;
  readonly platform: string;
  readonly rootfsFile: string;
  readonly rootfsBytes: number;
  readonly workSeedFile: string;
  readonly workSeedBytes: number;
  readonly config: ImageConfig;
  readonly canonicalReference: string;
}

/** What the orchestrator needs from the image puller. */
export interface PullerPort {
  /** Answers when the puller is up (UnavailableError naming its socket when not). */
  identify(scope: CallScope): Promise<ServiceIdentity>;
  pull(request: PullRequestPlain, scope: CallScope, onEvent: (event: PullEvent) => Promise<void>): Promise<PullOutcome>;
}

export interface ImageCatalog {
  /** Checks that the puller answers (failing at once if not), then starts the pull operation. */
  pull(
    req: { reference: string; name: string; platform: string; minRootfsMib: number },
    scope: CallScope,
  ): Promise<OperationRecord>;
  list(): Promise<ImageRecord[]>;
  get(name: string): Promise<ImageRecord>;
  /** Idempotent: the row first (refused while VMs use it), then the files. */
  delete(name: string): Promise<{ existed: boolean }>;
  /** Where an image's files live. */
  dir(name: string): string;
}

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

export function createImageCatalog(deps: {
  readonly db: Kysely<Database>;
  readonly stateDir: string;
  readonly puller: PullerPort;
  readonly operations: Operations;
  readonly logger: Logger;
  readonly pullDefaults?: PullDefaults;
  readonly now?: () => Date;
}): ImageCatalog {
  const { db, puller, operations, logger } = deps;
  const now = deps.now ?? (() => new Date());
  const imagesDir = join(deps.stateDir, "images");
  const stagingRoot = join(imagesDir, ".staging");
  const dir = (name: string) => join(imagesDir, validImageName(name));
  /** A short lock: publishes run one at a time (milliseconds: renames and a row). */
  const underPublishLock = createSerialLock();

  async function get(name: string): Promise<ImageRecord> {
    const image = await getImage(db, validImageName(name));
    if (!image) throw new NotFoundError(`image ${name} does not exist`, { reason: "IMAGE_NOT_FOUND" });
    return image;
  }

  return {
    dir,
    get,
    list: () => listImages(db),

    async pull(req, scope) {
      const fromCatalog = CATALOG.find((entry) => entry.name === req.reference);
      const reference = fromCatalog?.reference ?? req.reference;
      if (reference === "") throw new InvalidArgumentError("reference is required", { reason: "INVALID_REFERENCE" });
      const name = validImageName(req.name || fromCatalog?.name || imageNameFromReference(reference));
      if (await getImage(db, name)) {
        throw new AlreadyExistsError(`image ${name} already exists`, { reason: "IMAGE_NAME_TAKEN" });
      }
      await puller.identify(scope);
      return operations.start("pull-image", name, async (op) => {
        const staging = join(stagingRoot, op.id);
        await mkdir(staging, { recursive: true, mode: 0o700 });
        try {
          const layers: { id: string; doneBytes: number; totalBytes: number; state: string }[] = [];
          const outcome = await puller.pull(
            {
              reference,
              stagingDir: staging,
              platform: req.platform,
              minRootfsMib: req.minRootfsMib || (deps.pullDefaults?.minRootfsMib ?? 0),
              insecureRegistries: deps.pullDefaults?.insecureRegistries ?? [],
            },
            { signal: op.signal },
            async (event) => {
              if (event.kind === "stage") {
                await op.track(event.name, event.done ? "done" : "running", event.message);
                return;
              }
              const { digest: id, doneBytes, totalBytes, state } = event;
              layers[event.index] = { id, doneBytes, totalBytes, state };
              const known = layers.filter((layer) => layer !== undefined);
              op.progress("layers", {
                doneBytes: known.reduce((sum, layer) => sum + layer.doneBytes, 0),
                totalBytes: known.reduce((sum, layer) => sum + layer.totalBytes, 0),
                items: [...known],
              });
            },
          );
          const image = await op.stage("publish", () =>
            underPublishLock(async () => {
              if (await getImage(db, name)) {
                throw new AlreadyExistsError(`image ${name} was published by another pull meanwhile`, {
                  reason: "IMAGE_NAME_TAKEN",
                });
              }
              await mkdir(imagesDir, { recursive: true, mode: 0o700 });
              await rename(staging, dir(name));
              try {
                return await insertImage(db, {
                  name,
                  reference: outcome.canonicalReference || reference,
                  manifestDigest: outcome.manifestDigest,
                  platform: outcome.platform,
                  rootfsBytes: outcome.rootfsBytes,
                  workSeedBytes: outcome.workSeedBytes,
                  defaultKernel: null,
                  source: "pulled",
                  config: outcome.config,
                  createdAt: now(),
                });
              } catch (error) {
                await rm(dir(name), { recursive: true, force: true });
                throw error;
              }
            }),
          );
          logger.info({ image: name, digest: image.manifestDigest }, "image published");
          return { image: imageJson(image) };
        } finally {
          await rm(staging, { recursive: true, force: true });
        }
      });
    },

    async delete(name) {
      const image = await getImage(db, validImageName(name));
      if (!image) return { existed: false };
      const users = await listImageUsers(db, name);
      if (users.length > 0) {
        throw new FailedPreconditionError(`image ${name} is used by ${users.join(", ")}`, { reason: "IMAGE_IN_USE" });
      }
      await deleteImage(db, name);
      await rm(dir(name), { recursive: true, force: true });
      return { existed: true };
    },
  };
}

/** The operation result: the Image in proto JSON form (the rpc edge turns it into the message). */
export function imageJson(image: ImageRecord): JsonObject {
  return {
    name: image.name,
    reference: image.reference ?? "",
    manifestDigest: image.manifestDigest ?? "",
    platform: image.platform,
    rootfsBytes: String(image.rootfsBytes),
    workSeedBytes: String(image.workSeedBytes),
    defaultKernel: image.defaultKernel ?? "",
    source: `IMAGE_SOURCE_${image.source.toUpperCase()}`,
    createTime: image.createdAt.toISOString(),
    config: {
      ...image.config,
      entrypoint: [...image.config.entrypoint],
      cmd: [...image.config.cmd],
      env: [...image.config.env],
    },
  };
}
