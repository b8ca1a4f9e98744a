/**
 * Images: pulled through the image puller into a staging directory, then
 * published under a short per-name lock (re-check the name, atomic rename
 * into place, insert the row). Different images pull in parallel; two pulls
 * racing for one name give one winner and IMAGE_NAME_TAKEN for the other.
 *
 * `tiny` is built in: the puller builds it from the host's static busybox
 * with no download (banger's guest kit comes with banger's initramfs), and it
 * serves a create that names no image when the default image cannot be pulled
 * because its registry is unreachable (a machine offline): ensureDefault.
 *
 * The work lives in image/: catalog.ts (what banger can make), model.ts (names,
 * files, views), pull.ts (pulls), adopt.ts (register, promote), publish.ts
 * (the publish under the lock, shared by both).
 */
import { rm } from "node:fs/promises";
import { AlreadyExistsError, FailedPreconditionError, NotFoundError, type Logger } from "@banger/common";
import { stateLayout } from "@banger/common/layout";
import type { Kysely } from "kysely";
import {
  deleteImage,
  getImage,
  listImages,
  listImageUsers,
  listSnapshotsUsing,
  type Database,
  type ImageRecord,
  type OperationRecord,
} from "../store/index.js";
import type { CallScope } from "./call-scope.js";
import { adopt, register } from "./image/adopt.js";
import { TINY_IMAGE, registryUnreachable } from "./image/catalog.js";
import {
  validImageName,
  type AdoptRequest,
  type CredentialLookup,
  type ImageView,
  type PullDefaults,
} from "./image/model.js";
import type { ImageShelf } from "./image/publish.js";
import { ensureLocal, planPull, runPull } from "./image/pull.js";
import type { OperationContext, Operations } from "./operations.js";
import type { PullerPort } from "./ports.js";
import { createSerialLock } from "./serial-lock.js";

export type { PullEvent, PullerPort, PullOutcome, PullRequestPlain, RegistryCredential } from "./ports.js";
export {
  BUILTIN_IMAGES,
  CATALOG,
  TINY_IMAGE,
  isKnownImageName,
  registryUnreachable,
  type CatalogEntry,
} from "./image/catalog.js";
export {
  ROOTFS_FILE,
  WORK_SEED_FILE,
  imageNameFromReference,
  validImageName,
  type AdoptRequest,
  type CredentialLookup,
  type ImageView,
  type PullDefaults,
} from "./image/model.js";

export interface ImageCatalog {
  /** Checks that the puller answers (failing at once if not), then starts the pull operation. */
  pull(
    req: {
      reference: string;
      name: string;
      platform: string;
      minRootfsMib: number;
      /** Replace a local image of that name (refused while a VM uses it: IMAGE_IN_USE). */
      replace?: boolean;
    },
    scope: CallScope,
  ): Promise<OperationRecord>;
  /** Every image, sorted by name, with the VMs that use it. */
  list(): Promise<ImageView[]>;
  get(name: string): Promise<ImageView>;
  /**
   * Copies local ext4 files (sparse, reflinked where possible) into the
   * catalog and records the image. Errors: INVALID_PATH, NOT_EXT4,
   * PATH_NOT_FOUND, KERNEL_NOT_FOUND, IMAGE_NAME_TAKEN.
   */
  register(req: {
    name: string;
    rootfsPath: string;
    workSeedPath: string;
    defaultKernel: string;
  }): Promise<ImageRecord>;
  /**
   * Image `name` if it is local; else, when the catalog knows the name, pulls
   * it inside the caller's operation (the pull's layers show as progress of
   * the caller's stage `stage`). Errors: IMAGE_NOT_FOUND, and the pull's.
   */
  ensureLocal(name: string, op: OperationContext, stage: string, scope: CallScope): Promise<ImageRecord>;
  /**
   * ensureLocal for the default image (a create that names none); when its
   * pull fails because the registry is unreachable, the built-in image `tiny`
   * serves instead, built if it is not local, and a note on the caller's stage
   * says so and why. Any other failure is the pull's.
   */
  ensureDefault(name: string, op: OperationContext, stage: string, scope: CallScope): Promise<ImageRecord>;
  /**
   * Publishes local ext4 files as image `name` (copied first: the sources stay
   * as they are). Errors: IMAGE_NAME_TAKEN, KERNEL_NOT_FOUND.
   */
  adopt(req: AdoptRequest): Promise<ImageRecord>;
  /** Idempotent: the row first (refused while VMs use it), then the files. */
  delete(name: string): Promise<{ existed: boolean }>;
  /** Where an image's files live. */
  dir(name: string): string;
}

export function createImageCatalog(deps: {
  readonly db: Kysely<Database>;
  readonly stateDir: string;
  readonly puller: PullerPort;
  readonly operations: Operations;
  readonly logger: Logger;
  readonly pullDefaults?: PullDefaults;
  /** The owner's registry credentials; none when unset. */
  readonly credentials?: CredentialLookup;
  readonly now?: () => Date;
}): ImageCatalog {
  const { db, puller, operations, logger } = deps;
  const layout = stateLayout(deps.stateDir);
  const shelf: ImageShelf = {
    db,
    logger,
    now: deps.now ?? (() => new Date()),
    puller,
    credentials: deps.credentials,
    pullDefaults: deps.pullDefaults,
    imagesDir: layout.imagesDir,
    stagingRoot: layout.imageStagingDir,
    dir: (name) => layout.image(validImageName(name)).dir,
    underPublishLock: createSerialLock(),
    pulling: new Map(),
  };

  // The VMs that use it, then the snapshots that need it (prune and `image show` see both).
  const view = async (image: ImageRecord): Promise<ImageView> => ({
    ...image,
    usedBy: [
      ...(await listImageUsers(db, image.name)),
      ...(await listSnapshotsUsing(db, "image_name", image.name)).map((name) => `snapshot:${name}`),
    ],
  });

  async function get(name: string): Promise<ImageView> {
    const image = await getImage(db, validImageName(name));
    if (!image) throw new NotFoundError(`image ${name} does not exist`, { reason: "IMAGE_NOT_FOUND" });
    return view(image);
  }

  return {
    dir: shelf.dir,
    get,
    list: async () => Promise.all((await listImages(db)).map(view)),

    async pull(req, scope) {
      const planned = planPull(req);
      if (await getImage(db, planned.name)) {
        if (!planned.replace) {
          throw new AlreadyExistsError(`image ${planned.name} already exists`, { reason: "IMAGE_NAME_TAKEN" });
        }
        // Checked again when the new image is published: a VM made from it meanwhile refuses the swap.
        const users = await listImageUsers(db, planned.name);
        if (users.length > 0) {
          throw new FailedPreconditionError(`image ${planned.name} is used by ${users.join(", ")}`, {
            reason: "IMAGE_IN_USE",
          });
        }
      }
      await puller.identify(scope);
      return operations.start("pull-image", planned.name, async (op) => ({
        kind: "image",
        image: await runPull(shelf, op, planned),
      }));
    },

    ensureLocal: (name, op, stage, scope) => ensureLocal(shelf, name, op, stage, scope),

    async ensureDefault(name, op, stage, scope) {
      try {
        return await ensureLocal(shelf, name, op, stage, scope);
      } catch (error) {
        if (name === TINY_IMAGE || !registryUnreachable(error)) throw error;
        const note = `the default image ${name} could not be pulled (${error.message}): using the built-in image ${TINY_IMAGE} instead (busybox and banger's guest kit, built here)`;
        logger.warn({ image: name, err: error }, note);
        await op.note(stage, note);
        return ensureLocal(shelf, TINY_IMAGE, op, stage, scope);
      }
    },

    register: (req) => register(shelf, req),
    adopt: (req: AdoptRequest) => adopt(shelf, req),

    async delete(name) {
      const image = await getImage(db, validImageName(name));
      if (!image) return { existed: false };
      const users = await listImageUsers(db, name);
      if (users.length > 0) {
        throw new FailedPreconditionError(`image ${name} is used by ${users.join(", ")}`, { reason: "IMAGE_IN_USE" });
      }
      const snapshots = await listSnapshotsUsing(db, "image_name", name);
      if (snapshots.length > 0) {
        const noun = snapshots.length === 1 ? "snapshot" : "snapshots";
        throw new FailedPreconditionError(`image ${name} is needed by ${noun} ${snapshots.join(", ")}`, {
          reason: "IMAGE_IN_USE",
        });
      }
      await deleteImage(db, name);
      await rm(shelf.dir(name), { recursive: true, force: true });
      return { existed: true };
    },
  };
}
