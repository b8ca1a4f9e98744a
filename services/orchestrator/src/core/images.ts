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
 */
import { randomBytes } from "node:crypto";
import { chmod, lstat, mkdir, open, rename, rm, stat } from "node:fs/promises";
import { isAbsolute, join } from "node:path";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  UnavailableError,
  copySparse,
  parseReference,
  type Credentials,
  type Logger,
} from "@banger/common";
import { IMAGE_FILES, stateLayout } from "@banger/common/layout";
import type { Kysely } from "kysely";
import {
  deleteImage,
  EMPTY_IMAGE_CONFIG,
  getImage,
  getKernel,
  insertImage,
  listImages,
  listImageUsers,
  type Database,
  type ImageRecord,
  type OperationRecord,
} from "../store/index.js";
import type { CallScope } from "./call-scope.js";
import type { OperationContext, Operations } from "./operations.js";
import type { PullEvent, PullerPort, RegistryCredential } from "./ports.js";
import { createSerialLock } from "./serial-lock.js";
import { SharedReason } from "@banger/common/reasons";

export type { PullEvent, PullerPort, PullOutcome, PullRequestPlain, RegistryCredential } from "./ports.js";

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

/** The owner's credentials for a registry host (docker config, credential helpers), or undefined. */
export type CredentialLookup = (registry: string, signal: AbortSignal) => Promise<Credentials | undefined>;

/** What a pull uses when the request leaves it unset: from the config file. */
export interface PullDefaults {
  readonly insecureRegistries: readonly string[];
  readonly minRootfsMib: number;
}

/** What a pull needs from the operation it runs in. */
type PullContext = Pick<OperationContext, "id" | "signal" | "track" | "progress" | "stage">;

interface PlannedPull {
  /** Built by the puller from the host's files (`tiny`), not pulled: reference and registry are "". */
  readonly builtin: boolean;
  readonly reference: string;
  readonly registry: string;
  readonly name: string;
  readonly fromCatalog: CatalogEntry | undefined;
  readonly platform: string;
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

/** An image with the names of the VMs that use it, sorted. */
export interface ImageView extends ImageRecord {
  readonly usedBy: readonly string[];
}

export interface ImageCatalog {
  /** Checks that the puller answers (failing at once if not), then starts the pull operation. */
  pull(
    req: { reference: string; name: string; platform: string; minRootfsMib: number },
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
  /** The owner's registry credentials; none when unset. */
  readonly credentials?: CredentialLookup;
  readonly now?: () => Date;
}): ImageCatalog {
  const { db, puller, operations, logger } = deps;
  const now = deps.now ?? (() => new Date());
  const layout = stateLayout(deps.stateDir);
  const imagesDir = layout.imagesDir;
  const stagingRoot = layout.imageStagingDir;
  const dir = (name: string) => layout.image(validImageName(name)).dir;
  /** A short lock: publishes run one at a time (milliseconds: renames and a row). */
  const underPublishLock = createSerialLock();
  const minRootfsMib = (requested: number) => requested || (deps.pullDefaults?.minRootfsMib ?? 0);
  /** Catalog pulls that creates started, by image name. */
  const pulling = new Map<string, Promise<ImageRecord>>();

  /**
   * Under the short lock: re-checks the name, renames the staging directory
   * into place and inserts the row (the files go again if the row cannot).
   */
  function publish(staging: string, image: ImageRecord): Promise<ImageRecord> {
    return underPublishLock(async () => {
      if (await getImage(db, image.name)) {
        throw new AlreadyExistsError(`image ${image.name} was published by another call meanwhile`, {
          reason: "IMAGE_NAME_TAKEN",
        });
      }
      await mkdir(imagesDir, { recursive: true, mode: 0o700 });
      await rename(staging, dir(image.name));
      try {
        return await insertImage(db, image);
      } catch (error) {
        await rm(dir(image.name), { recursive: true, force: true });
        throw error;
      }
    });
  }

  /**
   * The privileged helper opens only the owner's files (it never lends root's access to another
   * user's), and it attaches an image's rootfs (the dm-snapshot origin). An installed puller is
   * another user (banger-puller): what it built is replaced by the orchestrator's own copy, shared
   * extents where the file system can. Nothing of the puller's may appear in the staging directory
   * after this: it loses its write access first.
   */
  async function ownRootfs(staging: string, signal: AbortSignal): Promise<void> {
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

  const view = async (image: ImageRecord): Promise<ImageView> => ({
    ...image,
    usedBy: await listImageUsers(db, image.name),
  });

  /** The pull itself: the puller builds into a staging directory, then the image is published. */
  async function runPull(op: PullContext, req: PlannedPull): Promise<ImageRecord> {
    const { reference, registry, name, fromCatalog, builtin } = req;
    const staging = join(stagingRoot, op.id);
    // Group-writable: an installed puller is another user, sharing `.staging`'s group (setgid; see
    // deploy/systemd). Explicit chmod: the service's umask would take the group's bits away.
    await mkdir(staging, { recursive: true, mode: 0o770 });
    await chmod(staging, 0o770);
    try {
      // The owner's docker login for that registry travels with this pull only.
      const found = builtin ? undefined : await deps.credentials?.(registry, op.signal);
      const credentials: RegistryCredential[] = found
        ? [
            found.kind === "basic"
              ? { registry, username: found.username, password: found.password, identityToken: "" }
              : { registry, username: "", password: "", identityToken: found.token },
          ]
        : [];
      const layers: { id: string; doneBytes: number; totalBytes: number; state: string }[] = [];
      const onEvent = async (event: PullEvent) => {
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
      };
      const outcome = builtin
        ? await puller.buildTiny(
            { stagingDir: staging, minRootfsMib: minRootfsMib(req.minRootfsMib) },
            { signal: op.signal },
            onEvent,
          )
        : await puller.pull(
            {
              reference,
              stagingDir: staging,
              platform: req.platform,
              minRootfsMib: minRootfsMib(req.minRootfsMib),
              insecureRegistries: deps.pullDefaults?.insecureRegistries ?? [],
              credentials,
            },
            { signal: op.signal },
            onEvent,
          );
      // The catalog's kernel, when it is here (else VMs boot the host default).
      const catalogKernel = fromCatalog?.defaultKernel ?? "";
      const defaultKernel = catalogKernel !== "" && (await getKernel(db, catalogKernel)) ? catalogKernel : null;
      const image = await op.stage("publish", async () => {
        await ownRootfs(staging, op.signal);
        return publish(staging, {
          name,
          reference: builtin ? null : outcome.canonicalReference || reference,
          manifestDigest: outcome.manifestDigest,
          platform: outcome.platform,
          rootfsBytes: outcome.rootfsBytes,
          workSeedBytes: outcome.workSeedBytes,
          defaultKernel,
          source: builtin ? "builtin" : "pulled",
          config: outcome.config,
          createdAt: now(),
        });
      });
      logger.info({ image: name, digest: image.manifestDigest }, "image published");
      return image;
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  /** Copies ext4 files (sparse, reflinked where possible) into a staging directory, then publishes them. */
  async function adopt(req: AdoptRequest): Promise<ImageRecord> {
    const staging = join(stagingRoot, `${req.source}-${randomBytes(6).toString("hex")}`);
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
      return await publish(staging, {
        name: validImageName(req.name),
        reference: null,
        manifestDigest: null,
        platform: "linux/amd64",
        rootfsBytes: await size(ROOTFS_FILE),
        workSeedBytes: req.workSeedPath ? await size(WORK_SEED_FILE) : 0,
        defaultKernel: req.defaultKernel,
        source: req.source,
        config: EMPTY_IMAGE_CONFIG,
        createdAt: now(),
      });
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  async function get(name: string): Promise<ImageView> {
    const image = await getImage(db, validImageName(name));
    if (!image) throw new NotFoundError(`image ${name} does not exist`, { reason: "IMAGE_NOT_FOUND" });
    return view(image);
  }

  async function ensureLocal(name: string, op: OperationContext, stage: string, scope: CallScope) {
    const local = await getImage(db, validImageName(name));
    if (local) return local;
    // Two creates of one catalog image share its pull.
    const running = pulling.get(name);
    if (running) return running;
    const builtin = name === TINY_IMAGE;
    const fromCatalog = CATALOG.find((entry) => entry.name === name);
    if (!fromCatalog && !builtin) {
      throw new NotFoundError(`image ${name} is neither local nor in the catalog`, { reason: "IMAGE_NOT_FOUND" });
    }
    await puller.identify(scope);
    // The pull runs inside the caller's stage: its own stages become notes, its layers that stage's progress.
    const inner: PullContext = {
      id: op.id,
      signal: op.signal,
      track: async (stage, state) => {
        if (state === "done") logger.info({ image: name, stage }, "pull stage done");
        return Promise.resolve();
      },
      progress: (_stage, value) => op.progress(stage, value),
      stage: (_stage, work) => work(),
    };
    const pull = runPull(inner, {
      builtin,
      reference: fromCatalog?.reference ?? "",
      registry: fromCatalog ? parseReference(fromCatalog.reference).registry : "",
      name,
      fromCatalog,
      platform: "",
      minRootfsMib: 0,
    }).finally(() => pulling.delete(name));
    pulling.set(name, pull);
    return pull;
  }

  return {
    dir,
    get,
    list: async () => Promise.all((await listImages(db)).map(view)),

    async pull(req, scope) {
      const builtin = req.reference === TINY_IMAGE;
      const fromCatalog = CATALOG.find((entry) => entry.name === req.reference);
      const reference = builtin ? "" : (fromCatalog?.reference ?? req.reference);
      if (reference === "" && !builtin) {
        throw new InvalidArgumentError("reference is required", { reason: "INVALID_REFERENCE" });
      }
      const registry = builtin ? "" : parseReference(reference).registry; // INVALID_REFERENCE before any operation
      const name = validImageName(
        req.name || (builtin ? TINY_IMAGE : fromCatalog?.name || imageNameFromReference(reference)),
      );
      if (await getImage(db, name)) {
        throw new AlreadyExistsError(`image ${name} already exists`, { reason: "IMAGE_NAME_TAKEN" });
      }
      await puller.identify(scope);
      return operations.start("pull-image", name, async (op) => ({
        kind: "image",
        image: await runPull(op, {
          builtin,
          reference,
          registry,
          name,
          fromCatalog,
          platform: req.platform,
          minRootfsMib: req.minRootfsMib,
        }),
      }));
    },

    ensureLocal,

    async ensureDefault(name, op, stage, scope) {
      try {
        return await ensureLocal(name, op, stage, scope);
      } catch (error) {
        if (name === TINY_IMAGE || !registryUnreachable(error)) throw error;
        const note = `the default image ${name} could not be pulled (${error.message}): using the built-in image ${TINY_IMAGE} instead (busybox and banger's guest kit, built here)`;
        logger.warn({ image: name, err: error }, note);
        await op.note(stage, note);
        return ensureLocal(TINY_IMAGE, op, stage, scope);
      }
    },

    async register(req) {
      const name = validImageName(req.name);
      const rootfs = await ext4File(req.rootfsPath, "rootfs_path");
      const workSeed = req.workSeedPath === "" ? undefined : await ext4File(req.workSeedPath, "work_seed_path");
      if (req.defaultKernel !== "" && !(await getKernel(db, req.defaultKernel))) {
        throw new NotFoundError(`kernel ${req.defaultKernel} does not exist`, { reason: "KERNEL_NOT_FOUND" });
      }
      if (await getImage(db, name)) {
        throw new AlreadyExistsError(`image ${name} already exists`, { reason: "IMAGE_NAME_TAKEN" });
      }
      const image = await adopt({
        name,
        rootfsPath: rootfs.path,
        ...(workSeed ? { workSeedPath: workSeed.path } : {}),
        defaultKernel: req.defaultKernel || null,
        source: "registered",
      });
      logger.info({ image: name, rootfs: rootfs.path }, "image registered");
      return image;
    },

    adopt,

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

/** An image's root filesystem and work seed inside its directory (see the layout's imageFiles). */
export const ROOTFS_FILE = IMAGE_FILES.rootfs;
export const WORK_SEED_FILE = IMAGE_FILES.workSeed;

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
