/**
 * An image's files published into the catalog: staged first (by the puller,
 * or copied), then under the short publish lock the name is checked again,
 * the staging directory renamed into place and the row inserted.
 */
import { chmod, lstat, mkdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { AlreadyExistsError, FailedPreconditionError, copySparse, type Logger } from "@banger/common";
import type { Kysely } from "kysely";
import { deleteImage, getImage, insertImage, type Database, type ImageRecord } from "../../store/index.js";
import type { PullerPort } from "../ports.js";
import { ROOTFS_FILE, type CredentialLookup, type PullDefaults } from "./model.js";

/** What the catalog's work shares: its store, directories, lock, the puller and the pulls under way. */
export interface ImageShelf {
  readonly db: Kysely<Database>;
  readonly logger: Logger;
  readonly now: () => Date;
  readonly puller: PullerPort;
  /** The owner's registry credentials; none when unset. */
  readonly credentials: CredentialLookup | undefined;
  readonly pullDefaults: PullDefaults | undefined;
  readonly imagesDir: string;
  /** Where pulls and copies stage their files (`images/.staging`). */
  readonly stagingRoot: string;
  /** An image's directory (its name checked). */
  readonly dir: (name: string) => string;
  /** The short publish lock: publishes run one at a time (milliseconds: renames and a row). */
  underPublishLock<T>(work: () => Promise<T>): Promise<T>;
  /** Catalog pulls that creates started, by image name. */
  readonly pulling: Map<string, Promise<ImageRecord>>;
}

/**
 * Under the short lock: re-checks the name, renames the staging directory
 * into place and inserts the row (the files go again if the row cannot).
 * With `replace`, an image of that name goes first: its row (refused while a
 * VM uses it: IMAGE_IN_USE), its directory renamed to `aside`, removed once
 * the new image is in (put back with its row if the new one cannot be).
 */
export async function publish(
  shelf: ImageShelf,
  staging: string,
  image: ImageRecord,
  options: { readonly replace: boolean; readonly aside: string } = { replace: false, aside: "" },
): Promise<ImageRecord> {
  const { db, dir } = shelf;
  let replaced: ImageRecord | undefined;
  const published = await shelf.underPublishLock(async () => {
    const existing = await getImage(db, image.name);
    if (existing && !options.replace) {
      throw new AlreadyExistsError(`image ${image.name} was published by another call meanwhile`, {
        reason: "IMAGE_NAME_TAKEN",
      });
    }
    await mkdir(shelf.imagesDir, { recursive: true, mode: 0o700 });
    if (existing) {
      await deleteImage(db, image.name); // IMAGE_IN_USE if a VM was made from it meanwhile
      await rename(dir(image.name), options.aside);
      replaced = existing;
    }
    try {
      await rename(staging, dir(image.name));
      return await insertImage(db, image);
    } catch (error) {
      await rm(dir(image.name), { recursive: true, force: true });
      if (replaced) {
        await rename(options.aside, dir(image.name));
        await insertImage(db, replaced);
        replaced = undefined;
      }
      throw error;
    }
  });
  if (replaced) {
    await rm(options.aside, { recursive: true, force: true });
    shelf.logger.info({ image: image.name, was: replaced.manifestDigest }, "image replaced");
  }
  return published;
}

/**
 * The privileged helper opens only the owner's files (it never lends root's access to another
 * user's), and it attaches an image's rootfs (the dm-snapshot origin). An installed puller is
 * another user (banger-puller): what it built is replaced by the orchestrator's own copy, shared
 * extents where the file system can. Nothing of the puller's may appear in the staging directory
 * after this: it loses its write access first.
 */
export async function ownRootfs(staging: string, signal: AbortSignal): Promise<void> {
  await chmod(staging, 0o750);
  const rootfs = join(staging, ROOTFS_FILE);
  const built = await lstat(rootfs);
  if (!built.isFile()) {
    throw new FailedPreconditionError(`the image puller left no regular ${ROOTFS_FILE}`, {
      reason: "IMAGE_ROOTFS_MISSING",
    });
  }
  if (built.uid === process.getuid?.()) return;
  const own = join(staging, `.${ROOTFS_FILE}.own`);
  await copySparse(rootfs, own, { signal });
  await chmod(own, 0o640); // read by the helper through the group (it has no CAP_DAC_OVERRIDE)
  await rename(own, rootfs);
}
