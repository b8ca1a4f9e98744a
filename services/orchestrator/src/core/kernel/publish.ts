/**
 * A kernel's files published into the catalog: staged (copied, or an
 * initramfs built), then under the short publish lock the name is checked
 * again, the directory (or the initrd) renamed into place and the row
 * written; whatever was there is moved aside first and put back when a later
 * step fails, so no half-published kernel is ever visible.
 */
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { AlreadyExistsError, FailedPreconditionError, NotFoundError, type Logger } from "@banger/common";
import { kernelDirFiles } from "@banger/common/layout";
import type { Kysely } from "kysely";
import {
  getDefaultKernel,
  getKernel,
  insertKernel,
  replaceKernel,
  setDefaultKernel,
  setKernelInitrdBytes,
  type Database,
  type KernelRecord,
} from "../../store/index.js";
import { buildInitramfs } from "../../guest/initramfs.js";
import type { OperationContext } from "../operations.js";
import { copyInto, extractInto, type ModuleChoice } from "./copy.js";
import { hostKernelName, kernelFiles, type KernelView } from "./model.js";
import { errnoOf, findHostKernel, type ImportPlan } from "./source.js";

/** What a kernel's work needs of the operation it runs in (its stages pass through when it runs inside another's). */
export type Stager = Pick<OperationContext, "id" | "signal" | "stage">;

/** What publishing works with: the catalog's store, directories and lock. */
export interface KernelShelf {
  readonly db: Kysely<Database>;
  readonly logger: Logger;
  readonly now: () => Date;
  /** The static busybox put into initramfs images. */
  readonly busybox: string;
  /** Where operations stage their files (`kernels/.staging`). */
  readonly stagingRoot: string;
  /** A kernel's directory (its name checked). */
  dir(name: string): string;
  /** The short publish lock: publishes and deletes run one at a time (milliseconds: renames and a row). */
  underPublishLock<T>(work: () => Promise<T>): Promise<T>;
  view(kernel: KernelRecord): Promise<KernelView>;
}

/** Moves the kernel's directory, if there is one, out of the way; returns where to, or null. */
export async function moveAside(shelf: KernelShelf, name: string): Promise<string | null> {
  const trash = join(shelf.stagingRoot, `${name}.${randomBytes(6).toString("hex")}.old`);
  await mkdir(shelf.stagingRoot, { recursive: true, mode: 0o700 });
  try {
    await rename(shelf.dir(name), trash);
    return trash;
  } catch (error) {
    if (errnoOf(error) === "ENOENT") return null;
    throw error;
  }
}

/** Runs `undo` after `error`; a failing undo is logged with the error it followed, which is rethrown. */
async function undoAfter(logger: Logger, error: unknown, what: string, undo: () => Promise<unknown>): Promise<never> {
  try {
    await undo();
  } catch (undoError) {
    logger.error({ err: undoError, after: String(error) }, `could not ${what}`);
  }
  throw error;
}

export async function removeQuietly(logger: Logger, path: string, name: string): Promise<void> {
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
export async function importKernel(
  shelf: KernelShelf,
  op: Stager,
  req: {
    name: string;
    plan: () => Promise<ImportPlan>;
    setDefault: boolean;
    replace: boolean;
    modules: ModuleChoice;
  },
): Promise<KernelView> {
  const { db, logger } = shelf;
  const { name } = req;
  const staging = join(shelf.stagingRoot, op.id);
  try {
    const plan = await op.stage("inspect", req.plan);
    const files = await op.stage("copy", () => copyInto(staging, plan, req.modules));
    const copied = files.uncompressed
      ? files
      : await op.stage("extract", () => extractInto(staging, files, op.signal, logger));
    const kernel = await op.stage("publish", () =>
      shelf.underPublishLock(async () => {
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
          createdAt: shelf.now(),
        };
        // A directory without a row is left over from a crash: it goes too.
        const old = await moveAside(shelf, name);
        try {
          await rename(staging, shelf.dir(name));
        } catch (error) {
          return undoAfter(logger, error, "put the old kernel back", async () => old && rename(old, shelf.dir(name)));
        }
        try {
          const stored = req.replace ? (await replaceKernel(db, record)).kernel : await insertKernel(db, record);
          return { stored, old };
        } catch (error) {
          return undoAfter(logger, error, "put the old kernel back", async () => {
            await rm(shelf.dir(name), { recursive: true, force: true });
            if (old) await rename(old, shelf.dir(name));
          });
        }
      }),
    );
    if (kernel.old) await removeQuietly(logger, kernel.old, name);
    logger.info(
      { kernel: name, version: kernel.stored.version, sha256: kernel.stored.kernelSha256 },
      "kernel imported",
    );
    return shelf.view(kernel.stored);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/** Builds banger's initramfs for `kernel` and publishes it as its initrd (the body of the build operation). */
export async function initramfsFor(shelf: KernelShelf, op: Stager, kernel: KernelView): Promise<KernelView> {
  const { db, logger } = shelf;
  const staging = join(shelf.stagingRoot, op.id);
  const staged = kernelDirFiles(staging);
  const published = kernelDirFiles(shelf.dir(kernel.name));
  try {
    await mkdir(staging, { recursive: true, mode: 0o700 });
    const built = await op.stage("build", () =>
      buildInitramfs({
        modulesDir: published.modules,
        output: staged.initrd,
        busybox: shelf.busybox,
        signal: op.signal,
      }),
    );
    const stored = await op.stage("publish", () =>
      shelf.underPublishLock(async () => {
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
        const target = published.initrd;
        const old = `${staged.initrd}.old`;
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
          await rename(staged.initrd, target);
          const marker = published.kitMarker;
          if (built.kit.programs.length > 0) await writeFile(marker, `${JSON.stringify(built.kit)}\n`);
          else await rm(marker, { force: true });
        } catch (error) {
          return undoAfter(logger, error, "put the old initrd back", putBack);
        }
        try {
          return await setKernelInitrdBytes(db, kernel.name, built.bytes);
        } catch (error) {
          return undoAfter(logger, error, "put the old initrd back", putBack);
        }
      }),
    );
    logger.info(
      { kernel: kernel.name, initrd_bytes: built.bytes, modules: built.modules, absent: built.absent },
      "initramfs built",
    );
    return shelf.view(stored);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/** The host's installed kernel imported (only the modules the initramfs loads), made the default, its initramfs built. */
export async function importHostKernel(
  shelf: KernelShelf,
  op: Pick<OperationContext, "id" | "signal">,
  host: { readonly root: string; readonly release: string | undefined },
): Promise<{ kernel: KernelRecord; imported?: string }> {
  const { root } = host;
  const found = await findHostKernel(root, host.release);
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
  const existing = await getKernel(shelf.db, name);
  // Imported before, then no longer the default: it becomes the default again.
  const kernel = existing
    ? await shelf.view(await setDefaultKernel(shelf.db, name))
    : await importKernel(shelf, inline, {
        name,
        plan: () =>
          Promise.resolve({ kernel: found.kernel, initrd: null, modules: found.modules, version: found.version }),
        setDefault: true,
        replace: false,
        modules: "initramfs",
      });
  const withInitramfs = kernelFiles(shelf.dir(name), kernel).kit ? kernel : await initramfsFor(shelf, inline, kernel);
  const imported =
    `no kernel was imported: imported this host's kernel ${found.version} (${found.kernel}, with the modules ` +
    `banger's initramfs loads) as ${name}, the default kernel, and built banger's initramfs for it`;
  shelf.logger.info({ kernel: name, version: found.version, source: found.kernel }, imported);
  return { kernel: withInitramfs, imported };
}
