/**
 * Images from local files: `image register` (ext4 files the owner names) and
 * promote (a stopped VM's disks) copy them (sparse, reflinked where possible)
 * into a staging directory, then publish them.
 */
import { randomBytes } from "node:crypto";
import { chmod, mkdir, open, rm, stat } from "node:fs/promises";
import { isAbsolute, join } from "node:path";
import {
  AlreadyExistsError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  copySparse,
} from "@banger/common";
import { EMPTY_IMAGE_CONFIG, getImage, getKernel, type ImageRecord } from "../../store/index.js";
import { ROOTFS_FILE, WORK_SEED_FILE, validImageName, type AdoptRequest } from "./model.js";
import { publish, type ImageShelf } from "./publish.js";

/** Copies ext4 files (sparse, reflinked where possible) into a staging directory, then publishes them. */
export async function adopt(shelf: ImageShelf, req: AdoptRequest): Promise<ImageRecord> {
  const staging = join(shelf.stagingRoot, `${req.source}-${randomBytes(6).toString("hex")}`);
  // Readable by the group: an installed helper (root without CAP_DAC_OVERRIDE) opens image files
  // through it (dm-snapshot origins).
  await mkdir(staging, { recursive: true, mode: 0o750 });
  await chmod(staging, 0o750);
  try {
    await copySparse(req.rootfsPath, join(staging, ROOTFS_FILE), req.signal ? { signal: req.signal } : {});
    await chmod(join(staging, ROOTFS_FILE), 0o640);
    if (req.workSeedPath) {
      await copySparse(req.workSeedPath, join(staging, WORK_SEED_FILE), req.signal ? { signal: req.signal } : {});
    }
    const size = async (file: string) => (await stat(join(staging, file))).size;
    return await publish(shelf, staging, {
      name: validImageName(req.name),
      reference: null,
      manifestDigest: null,
      platform: "linux/amd64",
      rootfsBytes: await size(ROOTFS_FILE),
      workSeedBytes: req.workSeedPath ? await size(WORK_SEED_FILE) : 0,
      defaultKernel: req.defaultKernel,
      source: req.source,
      config: EMPTY_IMAGE_CONFIG,
      createdAt: shelf.now(),
    });
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/**
 * Copies local ext4 files into the catalog and records the image. Errors:
 * INVALID_PATH, NOT_EXT4, PATH_NOT_FOUND, KERNEL_NOT_FOUND, IMAGE_NAME_TAKEN.
 */
export async function register(
  shelf: ImageShelf,
  req: { name: string; rootfsPath: string; workSeedPath: string; defaultKernel: string },
): Promise<ImageRecord> {
  const { db } = shelf;
  const name = validImageName(req.name);
  const rootfs = await ext4File(req.rootfsPath, "rootfs_path");
  const workSeed = req.workSeedPath === "" ? undefined : await ext4File(req.workSeedPath, "work_seed_path");
  if (req.defaultKernel !== "" && !(await getKernel(db, req.defaultKernel))) {
    throw new NotFoundError(`kernel ${req.defaultKernel} does not exist`, { reason: "KERNEL_NOT_FOUND" });
  }
  if (await getImage(db, name)) {
    throw new AlreadyExistsError(`image ${name} already exists`, { reason: "IMAGE_NAME_TAKEN" });
  }
  const image = await adopt(shelf, {
    name,
    rootfsPath: rootfs.path,
    ...(workSeed ? { workSeedPath: workSeed.path } : {}),
    defaultKernel: req.defaultKernel || null,
    source: "registered",
  });
  shelf.logger.info({ image: name, rootfs: rootfs.path }, "image registered");
  return image;
}

/** Offset of the ext2/3/4 superblock's magic number (0xEF53, little-endian). */
const EXT4_MAGIC_OFFSET = 1024 + 56;

/** An absolute path to a regular file that holds an ext2/3/4 file system; its size. */
async function ext4File(path: string, field: string): Promise<{ path: string; bytes: number }> {
  if (!isAbsolute(path)) {
    throw new InvalidArgumentError(`${field} must be an absolute path, got ${JSON.stringify(path)}`, {
      reason: "INVALID_PATH",
    });
  }
  let file;
  try {
    file = await open(path, "r");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") {
      throw new NotFoundError(`${path} does not exist`, { reason: "PATH_NOT_FOUND", cause: error });
    }
    if (code === "EACCES") throw new PermissionDeniedError(`${path} cannot be read`, { cause: error });
    throw error;
  }
  try {
    const info = await file.stat();
    if (!info.isFile()) {
      throw new InvalidArgumentError(`${path} is not a regular file`, { reason: "NOT_EXT4" });
    }
    const magic = Buffer.alloc(2);
    const { bytesRead } = await file.read(magic, 0, 2, EXT4_MAGIC_OFFSET);
    if (bytesRead !== 2 || magic.readUInt16LE(0) !== 0xef53) {
      throw new InvalidArgumentError(`${path} is not an ext4 file system image (no ext2/3/4 superblock)`, {
        reason: "NOT_EXT4",
      });
    }
    return { path, bytes: info.size };
  } finally {
    await file.close();
  }
}
