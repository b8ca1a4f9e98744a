/**
 * Kernels: imported from a directory on the host (its `metadata.json`, else
 * the layout a distribution kernel package unpacks to) into the catalog
 * `<stateDir>/kernels/<name>/`. The files are copied (reflink when the file
 * system can) into a staging directory, then published under a short lock
 * (re-check the name, atomic rename into place, write the row), so no
 * half-imported kernel is ever visible. A compressed kernel (a bzImage, a
 * distribution's vmlinuz) is stored as the vmlinux extracted from it when
 * banger can (guest/vmlinux.ts): Firecracker boots only that, and QEMU boots it
 * without decompressing in the guest. Deleting removes the row first, then
 * the files.
 *
 * BuildInitramfs builds banger's initramfs (guest/initramfs.ts) from a
 * kernel's modules in a staging directory and publishes it the same way: under
 * the lock, if the kernel is still the one it was built for, the old initrd is
 * moved aside, the new one renamed into place and the row's size updated.
 *
 * ensureHostKernel gives a first VM something to boot on a machine where no
 * kernel was imported: the host's installed kernel (/boot/vmlinuz-$(uname -r),
 * else the newest /boot/vmlinuz-* whose modules are installed) is imported the
 * same way, with only the modules banger's initramfs loads (a distribution's
 * whole tree is some 400 MB), made the default, and its initramfs built.
 */
import { constants, createReadStream, existsSync } from "node:fs";
import { copyFile, cp, mkdir, open, readFile, readdir, realpath, rename, rm, stat, writeFile } from "node:fs/promises";
import { createHash, randomBytes } from "node:crypto";
import { release as osRelease } from "node:os";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  type Logger,
} from "@banger/common";
import type { Kysely } from "kysely";
import {
  deleteKernel,
  getDefaultKernel,
  getKernel,
  insertKernel,
  listKernels,
  listKernelUsers,
  replaceKernel,
  setDefaultKernel,
  setKernelInitrdBytes,
  type Database,
  type JsonObject,
  type KernelRecord,
  type OperationRecord,
} from "../store/index.js";
import {
  DEFAULT_BUSYBOX,
  buildInitramfs,
  planModules,
  readModuleIndex,
  readStaticBusybox,
} from "../guest/initramfs.js";
import { extractVmlinux } from "../guest/vmlinux.js";
import type { OperationContext, Operations } from "./operations.js";
import { createSerialLock } from "./serial-lock.js";

/** A kernel with the images and VMs that use it. */
export interface KernelView extends KernelRecord {
  /** "image:<name>"… then "vm:<name>"…, each sorted (it cannot be deleted while any do). */
  readonly usedBy: readonly string[];
}

export interface ImportKernelRequest {
  readonly name: string;
  /** Absolute host path of the directory to import from. */
  readonly sourceDir: string;
  /** Make it the default (the first kernel imported always becomes it). */
  readonly setDefault: boolean;
  /** Replace a kernel of that name (refused while an image or VM uses it). */
  readonly replace: boolean;
}

export interface KernelCatalog {
  /**
   * Checks the name and the directory (failing at once: INVALID_KERNEL_NAME,
   * INVALID_PATH, PATH_NOT_FOUND, KERNEL_NAME_TAKEN, KERNEL_IN_USE), then
   * starts the import operation; its result is `{ kernel }`.
   */
  import(req: ImportKernelRequest): Promise<OperationRecord>;
  /** Every kernel, sorted by name. */
  list(): Promise<KernelView[]>;
  get(name: string): Promise<KernelView>;
  /** Makes it the default (the previous default stops being it). */
  setDefault(name: string): Promise<KernelView>;
  /** Idempotent: the row first (refused while in use, naming the users), then the files. */
  delete(name: string): Promise<{ existed: boolean }>;
  /** Where a kernel's files live. */
  dir(name: string): string;
  /**
   * Checks the kernel (KERNEL_NOT_FOUND; FAILED_PRECONDITION
   * KERNEL_HAS_NO_MODULES) and the host's static busybox (FAILED_PRECONDITION
   * BUSYBOX_MISSING, BUSYBOX_NOT_STATIC), then starts the build operation:
   * banger's initramfs for the kernel's modules becomes its initrd, replacing
   * one it had. Its result is `{ kernel }`. The operation fails
   * FAILED_PRECONDITION KERNEL_MODULE_MISSING when the modules lack a driver
   * the guest needs, KERNEL_CHANGED when the kernel was deleted or replaced
   * meanwhile.
   */
  buildInitramfs(name: string): Promise<OperationRecord>;
  /**
   * The default kernel; when there is none, the host's installed kernel,
   * imported inside the caller's operation (its steps are not stages of their
   * own), made the default, with banger's initramfs built for it. Concurrent
   * callers share one import. Returns the kernel and, when it imported one,
   * a sentence saying what it did. Errors: NOT_FOUND KERNEL_NOT_FOUND when
   * the host has no kernel with its modules installed; the import's and the
   * initramfs build's.
   */
  ensureDefault(op: Pick<OperationContext, "id" | "signal">): Promise<{ kernel: KernelRecord; imported?: string }>;
}

/** The host's installed kernel: its compressed image and its modules tree. */
export interface HostKernel {
  readonly version: string;
  /** `<root>/boot/vmlinuz-<version>`. */
  readonly kernel: string;
  /** `<root>/lib/modules/<version>`, with its modules.dep. */
  readonly modules: string;
}

/**
 * `<root>/boot/vmlinuz-<release>` when its modules are installed (the kernel
 * this host runs), else the newest `<root>/boot/vmlinuz-*` whose modules are;
 * undefined when there is none.
 */
export async function findHostKernel(root = "/", release = osRelease()): Promise<HostKernel | undefined> {
  const boot = join(root, "boot");
  const hasModules = async (version: string) =>
    stat(join(root, "lib", "modules", version, "modules.dep")).then(
      (info) => info.isFile(),
      () => false,
    );
  const versions = versioned(await entries(boot, "file"), /^vmlinuz-(.+)$/).map((v) => v.version);
  const candidates = [
    ...(versions.includes(release) ? [release] : []),
    ...[...versions].sort((a, b) => compareVersions(b, a)),
  ];
  for (const version of candidates) {
    if (await hasModules(version)) {
      return { version, kernel: join(boot, `vmlinuz-${version}`), modules: join(root, "lib", "modules", version) };
    }
  }
  return undefined;
}

/** The catalog name of the host's kernel `version`: "host-6.1.0-27-amd64". */
export function hostKernelName(version: string): string {
  return validKernelName(
    `host-${version
      .toLowerCase()
      .replace(/[^a-z0-9._-]/g, "-")
      .slice(0, 59)}`,
  );
}

/** The files of a kernel in the catalog. */
export interface KernelFiles {
  /** `vmlinux` when uncompressed, else `vmlinuz`. */
  readonly kernel: string;
  readonly initrd: string | null;
  /** The `lib/modules/<version>` tree. */
  readonly modules: string | null;
  /** Whether its initrd is banger's with the guest kit (an agent to wait for and ask). */
  readonly kit: boolean;
}

/** The files of `kernel`, stored in `dir`. */
export function kernelFiles(dir: string, kernel: KernelRecord): KernelFiles {
  return {
    kernel: join(dir, kernelFileName(kernel.uncompressed)),
    initrd: kernel.initrdBytes > 0 ? join(dir, INITRD_FILE) : null,
    modules: kernel.hasModules ? join(dir, MODULES_DIR) : null,
    kit: kernel.initrdBytes > 0 && existsSync(join(dir, KIT_MARKER)),
  };
}

const KERNEL_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const INITRD_FILE = "initrd";
/** Beside an initrd banger built with its guest kit: what the kit holds (JSON). */
const KIT_MARKER = "initrd.kit.json";
const MODULES_DIR = "modules";
/** A kernel release as `uname -r` prints it (at most 64 characters). */
const VERSION = /^[A-Za-z0-9._+~-]{1,64}$/;

export function validKernelName(name: string): string {
  if (!KERNEL_NAME.test(name)) {
    throw new InvalidArgumentError(`kernel name must match ${KERNEL_NAME.source}, got ${JSON.stringify(name)}`, {
      reason: "INVALID_KERNEL_NAME",
    });
  }
  return name;
}

function kernelFileName(uncompressed: boolean): string {
  return uncompressed ? "vmlinux" : "vmlinuz";
}

export function createKernelCatalog(deps: {
  readonly db: Kysely<Database>;
  readonly stateDir: string;
  readonly operations: Operations;
  readonly logger: Logger;
  readonly now?: () => Date;
  /** The static busybox put into initramfs images; default `DEFAULT_BUSYBOX` (/bin/busybox). */
  readonly busybox?: string;
  /** Where the host's installed kernels are found for ensureDefault (its boot/ and lib/modules/); default "/". */
  readonly hostRoot?: string;
  /** The running kernel's release (`uname -r`); default os.release(). */
  readonly hostRelease?: string;
}): KernelCatalog {
  const { db, operations, logger } = deps;
  const now = deps.now ?? (() => new Date());
  const busybox = deps.busybox ?? DEFAULT_BUSYBOX;
  const kernelsDir = join(deps.stateDir, "kernels");
  // Names cannot start with ".", so these never clash with a kernel.
  const stagingRoot = join(kernelsDir, ".staging");
  const dir = (name: string) => join(kernelsDir, validKernelName(name));
  const trashDir = (name: string) => join(stagingRoot, `${name}.${randomBytes(6).toString("hex")}.old`);
  /** A short lock: publishes and deletes run one at a time (milliseconds: renames and a row). */
  const underPublishLock = createSerialLock();

  async function view(kernel: KernelRecord): Promise<KernelView> {
    const users = await listKernelUsers(db, kernel.name);
    return { ...kernel, usedBy: [...users.images.map((n) => `image:${n}`), ...users.vms.map((n) => `vm:${n}`)] };
  }

  async function get(name: string): Promise<KernelView> {
    const kernel = await getKernel(db, validKernelName(name));
    if (!kernel) throw new NotFoundError(`kernel "${name}" does not exist`, { reason: "KERNEL_NOT_FOUND" });
    return view(kernel);
  }

  async function refuseInUse(name: string): Promise<void> {
    const users = await listKernelUsers(db, name);
    const parts = [listOf("image", users.images), listOf("VM", users.vms)].filter((part) => part !== "");
    if (parts.length > 0) {
      throw new FailedPreconditionError(`kernel "${name}" is used by ${parts.join(" and ")}; it cannot be replaced`, {
        reason: "KERNEL_IN_USE",
      });
    }
  }

  /** Moves the kernel's directory, if there is one, out of the way; returns where to, or null. */
  async function moveAside(name: string): Promise<string | null> {
    const trash = trashDir(name);
    await mkdir(stagingRoot, { recursive: true, mode: 0o700 });
    try {
      await rename(dir(name), trash);
      return trash;
    } catch (error) {
      if (errnoOf(error) === "ENOENT") return null;
      throw error;
    }
  }

  /** Runs `undo` after `error`; a failing undo is logged with the error it followed, which is rethrown. */
  async function undoAfter(error: unknown, what: string, undo: () => Promise<unknown>): Promise<never> {
    try {
      await undo();
    } catch (undoError) {
      logger.error({ err: undoError, after: String(error) }, `could not ${what}`);
    }
    throw error;
  }

  /**
   * Replaces the staged vmlinuz by the vmlinux inside it, when banger can
   * extract one; otherwise the vmlinuz stays (QEMU boots it; Firecracker cannot).
   */
  async function extractInto(staging: string, copied: Copied, signal: AbortSignal): Promise<Copied> {
    const vmlinuz = join(staging, kernelFileName(false));
    let extracted: Awaited<ReturnType<typeof extractVmlinux>>;
    try {
      extracted = await extractVmlinux(vmlinuz, { signal });
    } catch (error) {
      if (!(error instanceof FailedPreconditionError && error.reason === "HOST_TOOL_MISSING")) throw error;
      logger.warn(
        { err: error },
        "kept the compressed kernel: its decompressor is missing (Firecracker cannot boot it)",
      );
      return copied;
    }
    if ("reason" in extracted) {
      logger.warn({ why: extracted.reason }, "kept the kernel as it is: no vmlinux can be extracted from it");
      return copied;
    }
    const vmlinux = join(staging, kernelFileName(true));
    await writeFile(vmlinux, extracted.vmlinux, { mode: 0o644 });
    await rm(vmlinuz);
    logger.info({ compression: extracted.compression, bytes: extracted.vmlinux.length }, "vmlinux extracted");
    return {
      ...copied,
      kernelSha256: await sha256Of(vmlinux),
      kernelBytes: extracted.vmlinux.length,
      uncompressed: true,
    };
  }

  async function removeQuietly(path: string, name: string): Promise<void> {
    // The kernel is already published or deleted; leftovers only cost space.
    await rm(path, { recursive: true, force: true }).catch((error: unknown) =>
      logger.warn({ kernel: name, err: error, path }, "could not remove an old kernel directory"),
    );
  }

  /**
   * Imports a kernel (the body of the import operation, or part of a create's
   * stage): inspect, copy (all its modules, or only those banger's initramfs
   * loads), extract the vmlinux, publish under the lock.
   */
  async function importKernel(
    op: Stager,
    req: {
      name: string;
      plan: () => Promise<ImportPlan>;
      setDefault: boolean;
      replace: boolean;
      modules: ModuleChoice;
    },
  ): Promise<KernelView> {
    const { name } = req;
    const staging = join(stagingRoot, op.id);
    try {
      const plan = await op.stage("inspect", req.plan);
      const files = await op.stage("copy", () => copyInto(staging, plan, req.modules));
      const copied = files.uncompressed
        ? files
        : await op.stage("extract", () => extractInto(staging, files, op.signal));
      const kernel = await op.stage("publish", () =>
        underPublishLock(async () => {
          const existing = await getKernel(db, name);
          if (existing && !req.replace) {
            throw new AlreadyExistsError(`kernel "${name}" was imported by another import meanwhile`, {
              reason: "KERNEL_NAME_TAKEN",
            });
          }
          const record: KernelRecord = {
            name,
            ...copied,
            version: plan.version,
            // The first kernel becomes the default; replacing keeps the default with the name.
            isDefault: req.setDefault || (await getDefaultKernel(db)) === undefined,
            createdAt: now(),
          };
          // A directory without a row is left over from a crash: it goes too.
          const old = await moveAside(name);
          try {
            await rename(staging, dir(name));
          } catch (error) {
            return undoAfter(error, "put the old kernel back", async () => old && rename(old, dir(name)));
          }
          try {
            const stored = req.replace ? (await replaceKernel(db, record)).kernel : await insertKernel(db, record);
            return { stored, old };
          } catch (error) {
            return undoAfter(error, "put the old kernel back", async () => {
              await rm(dir(name), { recursive: true, force: true });
              if (old) await rename(old, dir(name));
            });
          }
        }),
      );
      if (kernel.old) await removeQuietly(kernel.old, name);
      logger.info(
        { kernel: name, version: kernel.stored.version, sha256: kernel.stored.kernelSha256 },
        "kernel imported",
      );
      return view(kernel.stored);
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  /** Builds banger's initramfs for `kernel` and publishes it as its initrd (the body of the build operation). */
  async function initramfsFor(op: Stager, kernel: KernelView): Promise<KernelView> {
    const staging = join(stagingRoot, op.id);
    try {
      await mkdir(staging, { recursive: true, mode: 0o700 });
      const built = await op.stage("build", () =>
        buildInitramfs({
          modulesDir: join(dir(kernel.name), MODULES_DIR),
          output: join(staging, INITRD_FILE),
          busybox,
          signal: op.signal,
        }),
      );
      const stored = await op.stage("publish", () =>
        underPublishLock(async () => {
          const current = await getKernel(db, kernel.name);
          if (
            current?.kernelSha256 !== kernel.kernelSha256 ||
            current.createdAt.getTime() !== kernel.createdAt.getTime()
          ) {
            throw new FailedPreconditionError(
              `kernel "${kernel.name}" was deleted or replaced while its initramfs was built; build it again`,
              { reason: "KERNEL_CHANGED" },
            );
          }
          const target = join(dir(kernel.name), INITRD_FILE);
          const old = join(staging, `${INITRD_FILE}.old`);
          const hadOld = await rename(target, old).then(
            () => true,
            (error: unknown) => {
              if (errnoOf(error) === "ENOENT") return false;
              throw error;
            },
          );
          const putBack = async () => {
            if (hadOld) await rename(old, target);
            else await rm(target, { force: true });
          };
          try {
            await rename(join(staging, INITRD_FILE), target);
            const marker = join(dir(kernel.name), KIT_MARKER);
            if (built.kit.programs.length > 0) await writeFile(marker, `${JSON.stringify(built.kit)}\n`);
            else await rm(marker, { force: true });
          } catch (error) {
            return undoAfter(error, "put the old initrd back", putBack);
          }
          try {
            return await setKernelInitrdBytes(db, kernel.name, built.bytes);
          } catch (error) {
            return undoAfter(error, "put the old initrd back", putBack);
          }
        }),
      );
      logger.info(
        { kernel: kernel.name, initrd_bytes: built.bytes, modules: built.modules, absent: built.absent },
        "initramfs built",
      );
      return view(stored);
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  let hostImport: Promise<{ kernel: KernelRecord; imported?: string }> | undefined;

  /** The host's installed kernel imported (only the modules the initramfs loads), made the default, its initramfs built. */
  async function importHostKernel(op: Pick<OperationContext, "id" | "signal">) {
    const root = deps.hostRoot ?? "/";
    const found = await findHostKernel(root, deps.hostRelease);
    if (!found) {
      throw new NotFoundError(
        "no kernel to boot: none is imported, and this host has no installed kernel banger can use " +
          `(${join(root, "boot", "vmlinuz-*")} with its modules in ${join(root, "lib", "modules")}); ` +
          "install one (Debian, Ubuntu: apt install linux-image-amd64) or import one with 'banger kernel import NAME DIR'",
        { reason: "KERNEL_NOT_FOUND" },
      );
    }
    const name = hostKernelName(found.version);
    const inline: Stager = { id: `${op.id}-host-kernel`, signal: op.signal, stage: (_name, work) => work() };
    const existing = await getKernel(db, name);
    // Imported before, then no longer the default: it becomes the default again.
    const kernel = existing
      ? await view(await setDefaultKernel(db, name))
      : await importKernel(inline, {
          name,
          plan: () =>
            Promise.resolve({ kernel: found.kernel, initrd: null, modules: found.modules, version: found.version }),
          setDefault: true,
          replace: false,
          modules: "initramfs",
        });
    const withInitramfs = kernelFiles(dir(name), kernel).kit ? kernel : await initramfsFor(inline, kernel);
    const imported =
      `no kernel was imported: imported this host's kernel ${found.version} (${found.kernel}, with the modules ` +
      `banger's initramfs loads) as ${name}, the default kernel, and built banger's initramfs for it`;
    logger.info({ kernel: name, version: found.version, source: found.kernel }, imported);
    return { kernel: withInitramfs, imported };
  }

  return {
    dir,
    get,

    async list() {
      return Promise.all((await listKernels(db)).map(view));
    },

    async setDefault(name) {
      return view(await setDefaultKernel(db, validKernelName(name)));
    },

    async import(req) {
      const name = validKernelName(req.name);
      const sourceDir = await validSourceDir(req.sourceDir);
      if (await getKernel(db, name)) {
        if (!req.replace) {
          throw new AlreadyExistsError(`kernel "${name}" already exists (replace it to import it again)`, {
            reason: "KERNEL_NAME_TAKEN",
          });
        }
        await refuseInUse(name);
      }
      return operations.start("import-kernel", name, async (op) => ({
        kernel: kernelJson(
          await importKernel(op, {
            name,
            plan: () => planImport(sourceDir),
            setDefault: req.setDefault,
            replace: req.replace,
            modules: "all",
          }),
        ),
      }));
    },

    async buildInitramfs(name) {
      const kernel = await get(name);
      if (!kernel.hasModules) {
        throw new FailedPreconditionError(
          `kernel "${kernel.name}" has no modules to build an initramfs from (import it again with its lib/modules/<version>; a kernel with its drivers built in needs no initramfs)`,
          { reason: "KERNEL_HAS_NO_MODULES" },
        );
      }
      await readStaticBusybox(busybox);
      return operations.start("build-initramfs", kernel.name, async (op) => ({
        kernel: kernelJson(await initramfsFor(op, kernel)),
      }));
    },

    async ensureDefault(op) {
      const current = await getDefaultKernel(db);
      if (current) return { kernel: current };
      // Two creates on a fresh machine share one import.
      hostImport ??= importHostKernel(op).finally(() => (hostImport = undefined));
      return hostImport;
    },

    async delete(name) {
      validKernelName(name);
      const { existed, old } = await underPublishLock(async () => {
        // Refused while in use, naming the images and VMs; the files stay then.
        const deleted = await deleteKernel(db, name);
        return { existed: deleted, old: await moveAside(name) };
      });
      if (old) await removeQuietly(old, name);
      if (existed) logger.info({ kernel: name }, "kernel deleted");
      return { existed };
    },
  };
}

/** The operation result: the Kernel in proto JSON form (the rpc edge turns it into the message). */
export function kernelJson(kernel: KernelView): JsonObject {
  return {
    name: kernel.name,
    version: kernel.version,
    kernelSha256: kernel.kernelSha256,
    kernelBytes: String(kernel.kernelBytes),
    uncompressed: kernel.uncompressed,
    initrdBytes: String(kernel.initrdBytes),
    hasModules: kernel.hasModules,
    isDefault: kernel.isDefault,
    createTime: kernel.createdAt.toISOString(),
    usedBy: [...kernel.usedBy],
  };
}

/** What to copy, as absolute host paths. */
interface ImportPlan {
  readonly kernel: string;
  readonly initrd: string | null;
  readonly modules: string | null;
  /** "" if unknown. */
  readonly version: string;
}

async function validSourceDir(path: string): Promise<string> {
  if (!isAbsolute(path)) {
    throw new InvalidArgumentError(`source directory must be an absolute path, got ${JSON.stringify(path)}`, {
      reason: "INVALID_PATH",
    });
  }
  const dir = resolve(path);
  let info;
  try {
    info = await stat(dir);
  } catch (error) {
    const code = errnoOf(error);
    if (code === "ENOENT" || code === "ENOTDIR") {
      throw new NotFoundError(`${dir} does not exist`, { reason: "PATH_NOT_FOUND", cause: error });
    }
    if (code === "EACCES") throw unreadable(dir, error);
    throw error;
  }
  if (!info.isDirectory()) throw new InvalidArgumentError(`${dir} is not a directory`, { reason: "INVALID_PATH" });
  return dir;
}

/** metadata.json when the directory has one, else the distribution layout. */
async function planImport(sourceDir: string): Promise<ImportPlan> {
  let metadata: string | undefined;
  try {
    metadata = await readFile(join(sourceDir, "metadata.json"), "utf8");
  } catch (error) {
    if (errnoOf(error) !== "ENOENT") throw error;
  }
  const plan = metadata === undefined ? await planFromLayout(sourceDir) : await planFromMetadata(sourceDir, metadata);
  if ((await stat(plan.kernel)).size === 0) {
    throw new InvalidArgumentError(`kernel file ${plan.kernel} is empty`, { reason: "NO_KERNEL_FOUND" });
  }
  return plan;
}

function invalidMetadata(message: string, cause?: unknown): InvalidArgumentError {
  return new InvalidArgumentError(`metadata.json: ${message}`, {
    reason: "INVALID_METADATA",
    ...(cause === undefined ? {} : { cause }),
  });
}

async function planFromMetadata(sourceDir: string, text: string): Promise<ImportPlan> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw invalidMetadata(`not valid JSON (${(error as Error).message})`, error);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw invalidMetadata("must hold a JSON object");
  }
  const fields = parsed as Record<string, unknown>;
  const field = (key: string): string => {
    const value = fields[key];
    if (value === undefined || value === null) return "";
    if (typeof value !== "string") throw invalidMetadata(`"${key}" must be a string`);
    return value;
  };
  const kernel = field("kernel");
  if (kernel === "") throw invalidMetadata('"kernel" (the kernel file, relative to the directory) is required');
  const initrd = field("initrd");
  const modules = field("modules");
  const version = field("version") || versionFromFileName(basename(kernel));
  if (version !== "" && !VERSION.test(version)) {
    throw invalidMetadata(`"version" must match ${VERSION.source}, got ${JSON.stringify(version)}`);
  }
  return {
    kernel: await insideSource(sourceDir, "kernel", kernel, "file"),
    initrd: initrd === "" ? null : await insideSource(sourceDir, "initrd", initrd, "file"),
    modules: modules === "" ? null : await insideSource(sourceDir, "modules", modules, "directory"),
    version,
  };
}

/** The real path of `path` (relative to `root`), refused unless it stays inside `root`, symbolic links included. */
async function insideSource(root: string, key: string, path: string, kind: "file" | "directory"): Promise<string> {
  const named = `"${key}" (${JSON.stringify(path)})`;
  if (isAbsolute(path)) throw invalidMetadata(`${named} must be relative to the directory`);
  if (!isInside(root, resolve(root, path))) throw invalidMetadata(`${named} leads out of the directory`);
  let real: string;
  try {
    real = await realpath(resolve(root, path));
  } catch (error) {
    if (errnoOf(error) === "ENOENT") throw invalidMetadata(`${named} does not exist`, error);
    throw error;
  }
  if (!isInside(await realpath(root), real)) {
    throw invalidMetadata(`${named} leads out of the directory through a symbolic link`);
  }
  const info = await stat(real);
  if (kind === "file" ? !info.isFile() : !info.isDirectory()) throw invalidMetadata(`${named} is not a ${kind}`);
  return real;
}

/** Whether `path` is strictly inside `root` (both absolute and normalized). */
function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== "" && rel !== ".." && !rel.startsWith(`..${sep}`) && !isAbsolute(rel);
}

/**
 * `boot/vmlinux-*` (else `boot/vmlinuz-*`; the highest version when there
 * are several), the initrd of the same version (or the only one), and
 * `lib/modules/<version>` (else the highest one starting with the version,
 * else the highest one).
 */
async function planFromLayout(sourceDir: string): Promise<ImportPlan> {
  const boot = join(sourceDir, "boot");
  const bootFiles = await entries(boot, "file");
  const kernels = (prefix: string) => versioned(bootFiles, new RegExp(`^${prefix}-(.+)$`));
  const candidates = kernels("vmlinux").length > 0 ? kernels("vmlinux") : kernels("vmlinuz");
  const kernel = highest(candidates);
  if (kernel === undefined) {
    throw new InvalidArgumentError(
      `no kernel in ${sourceDir}: it has no metadata.json and no boot/vmlinux-* or boot/vmlinuz-*`,
      { reason: "NO_KERNEL_FOUND" },
    );
  }
  const version = kernel.version;
  const initrds = versioned(bootFiles, /^(?:initramfs|initrd\.img)-(.+?)(?:\.img)?$/);
  const initrd = initrds.find((i) => i.version === version) ?? (initrds.length === 1 ? initrds[0] : undefined);

  let modules: string | null = null;
  for (const base of [join(sourceDir, "lib", "modules"), join(sourceDir, "usr", "lib", "modules")]) {
    const trees = (await entries(base, "directory")).map((entry) => ({ entry, version: entry }));
    const tree =
      trees.find((t) => t.version === version) ??
      highest(trees.filter((t) => t.version.startsWith(version))) ??
      highest(trees);
    if (tree) {
      modules = join(base, tree.entry);
      break;
    }
  }
  return {
    kernel: join(boot, kernel.entry),
    initrd: initrd ? join(boot, initrd.entry) : null,
    modules,
    version: VERSION.test(version) ? version : "",
  };
}

interface Versioned {
  readonly entry: string;
  readonly version: string;
}

function versioned(names: readonly string[], pattern: RegExp): Versioned[] {
  return names.flatMap((entry) => {
    const version = pattern.exec(entry)?.[1];
    return version === undefined ? [] : [{ entry, version }];
  });
}

function highest<T extends Versioned>(items: readonly T[]): T | undefined {
  return [...items].sort((a, b) => compareVersions(b.version, a.version))[0];
}

/** "vmlinuz-6.1.0-27-amd64" → "6.1.0-27-amd64"; "" when the name has no version. */
function versionFromFileName(file: string): string {
  return /^vmlinu[xz]-(.+)$/.exec(file)?.[1] ?? "";
}

/** Orders kernel releases: runs of digits compare as numbers ("6.10" > "6.9"), the rest as text. */
export function compareVersions(a: string, b: string): number {
  const pa = a.match(/\d+|\D+/g) ?? [];
  const pb = b.match(/\d+|\D+/g) ?? [];
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i];
    const y = pb[i];
    if (x === undefined || y === undefined) return x === undefined ? -1 : 1;
    if (x === y) continue;
    if (/^\d/.test(x) && /^\d/.test(y)) {
      const [nx, ny] = [x.replace(/^0+(?=\d)/, ""), y.replace(/^0+(?=\d)/, "")];
      if (nx.length !== ny.length) return nx.length - ny.length;
      if (nx !== ny) return nx < ny ? -1 : 1;
    } else {
      return x < y ? -1 : 1;
    }
  }
  return 0;
}

/**
 * A directory bangerd may not read. Under its unit (systemd sets INVOCATION_ID) that is usually
 * the sandbox: it sees the owner's home read-only and never /lib/modules.
 */
function unreadable(dir: string, cause: unknown): PermissionDeniedError {
  const why =
    process.env["INVOCATION_ID"] === undefined
      ? ""
      : ": bangerd's unit shows it only your home (read-only) and hides /lib/modules; copy the kernel package " +
        "(boot/vmlinuz-VERSION, lib/modules/VERSION) into your home and import that copy";
  return new PermissionDeniedError(`bangerd cannot read ${dir}${why}`, { reason: "SOURCE_UNREADABLE", cause });
}

/** Names of the regular files (or directories) in `dir`, symbolic links followed; none if it is missing. */
async function entries(dir: string, kind: "file" | "directory"): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    const code = errnoOf(error);
    if (code === "ENOENT" || code === "ENOTDIR") return [];
    if (code === "EACCES" || code === "EPERM") throw unreadable(dir, error);
    throw error;
  }
  const kept = await Promise.all(
    names.map(async (name) => {
      const info = await stat(join(dir, name)).catch(() => undefined);
      return (kind === "file" ? info?.isFile() : info?.isDirectory()) ? name : undefined;
    }),
  );
  return kept.filter((name) => name !== undefined).sort();
}

/** What a kernel's work needs of the operation it runs in (its stages pass through when it runs inside another's). */
type Stager = Pick<OperationContext, "id" | "signal" | "stage">;

/** Which of a kernel's modules to copy: all of them, or only those banger's initramfs loads (and the index files). */
type ModuleChoice = "all" | "initramfs";

/** The index files of a modules tree that banger's initramfs reads (modules.dep at least). */
const MODULE_INDEX_FILES = ["modules.dep", "modules.builtin", "modules.alias", "modules.softdep", "modules.order"];

/** Copies the modules banger's initramfs loads from `source` (a lib/modules/<version> tree), with its index files. */
async function copyInitramfsModules(source: string, target: string): Promise<number> {
  const plan = planModules(await readModuleIndex(source));
  await mkdir(target, { recursive: true, mode: 0o755 });
  for (const file of MODULE_INDEX_FILES) {
    await copyFile(join(source, file), join(target, file), constants.COPYFILE_FICLONE).catch((error: unknown) => {
      if (errnoOf(error) !== "ENOENT") throw error;
    });
  }
  for (const module of plan.load) {
    await mkdir(dirname(join(target, module.path)), { recursive: true });
    await copyFile(join(source, module.path), join(target, module.path), constants.COPYFILE_FICLONE);
  }
  return plan.load.length;
}

/** The row's file fields, measured on the copies as stored. */
type Copied = Pick<KernelRecord, "kernelSha256" | "kernelBytes" | "uncompressed" | "initrdBytes" | "hasModules">;

/** Copies the plan's files into `staging` (reflink when possible): kernel, initrd, modules/. */
async function copyInto(staging: string, plan: ImportPlan, modules: ModuleChoice): Promise<Copied> {
  await mkdir(staging, { recursive: true, mode: 0o700 });
  const uncompressed = await isElf(plan.kernel);
  const kernel = join(staging, kernelFileName(uncompressed));
  await copyFile(plan.kernel, kernel, constants.COPYFILE_FICLONE);
  let initrdBytes = 0;
  if (plan.initrd !== null) {
    await copyFile(plan.initrd, join(staging, INITRD_FILE), constants.COPYFILE_FICLONE);
    initrdBytes = (await stat(join(staging, INITRD_FILE))).size;
  }
  if (plan.modules !== null && modules === "initramfs") {
    await copyInitramfsModules(plan.modules, join(staging, MODULES_DIR));
  } else if (plan.modules !== null) {
    await cp(plan.modules, join(staging, MODULES_DIR), {
      recursive: true,
      verbatimSymlinks: true,
      errorOnExist: true,
      force: false,
      preserveTimestamps: true,
      mode: constants.COPYFILE_FICLONE,
    });
  }
  return {
    kernelSha256: await sha256Of(kernel),
    kernelBytes: (await stat(kernel)).size,
    uncompressed,
    initrdBytes,
    hasModules: plan.modules !== null,
  };
}

/** Whether the file starts with the ELF magic (an uncompressed vmlinux, not a bzImage). */
async function isElf(file: string): Promise<boolean> {
  const handle = await open(file, "r");
  try {
    const magic = Buffer.alloc(4);
    const { bytesRead } = await handle.read(magic, 0, 4, 0);
    return bytesRead === 4 && magic.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
  } finally {
    await handle.close();
  }
}

async function sha256Of(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return `sha256:${hash.digest("hex")}`;
}

function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

function listOf(noun: string, names: readonly string[]): string {
  if (names.length === 0) return "";
  return `${noun}${names.length === 1 ? "" : "s"} ${names.join(", ")}`;
}
