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
import { AlreadyExistsError, FailedPreconditionError, NotFoundError, type Logger } from "@banger/common";
import { stateLayout } from "@banger/common/layout";
import type { Kysely } from "kysely";
import {
  deleteKernel,
  getDefaultKernel,
  getKernel,
  listKernels,
  listKernelUsers,
  setDefaultKernel,
  type Database,
  type KernelRecord,
  type OperationRecord,
} from "../store/index.js";
import { DEFAULT_BUSYBOX, readStaticBusybox } from "../guest/initramfs.js";
import type { OperationContext, Operations } from "./operations.js";
import { createSerialLock } from "./serial-lock.js";
import { validKernelName, type KernelView } from "./kernel/model.js";
import {
  importHostKernel,
  importKernel,
  initramfsFor,
  moveAside,
  removeQuietly,
  type KernelShelf,
} from "./kernel/publish.js";
import { planImport, validSourceDir } from "./kernel/source.js";

export { hostKernelName, kernelFiles, validKernelName, type KernelFiles, type KernelView } from "./kernel/model.js";
export { compareVersions, findHostKernel, type HostKernel } from "./kernel/source.js";

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
   * starts the import operation; its result is the kernel (`{ kind: "kernel", kernel }`).
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
   * one it had. Its result is the kernel. The operation fails
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
  const layout = stateLayout(deps.stateDir);
  const shelf: KernelShelf = {
    db,
    logger,
    now: deps.now ?? (() => new Date()),
    busybox: deps.busybox ?? DEFAULT_BUSYBOX,
    // Names cannot start with ".", so these never clash with a kernel.
    stagingRoot: layout.kernelStagingDir,
    dir: (name) => layout.kernel(validKernelName(name)).dir,
    underPublishLock: createSerialLock(),
    view,
  };

  async function view(kernel: KernelRecord): Promise<KernelView> {
    const users = await listKernelUsers(db, kernel.name);
    const usedBy = [
      ...users.images.map((n) => `image:${n}`),
      ...users.vms.map((n) => `vm:${n}`),
      ...users.snapshots.map((n) => `snapshot:${n}`),
    ];
    return { ...kernel, usedBy };
  }

  async function get(name: string): Promise<KernelView> {
    const kernel = await getKernel(db, validKernelName(name));
    if (!kernel) throw new NotFoundError(`kernel "${name}" does not exist`, { reason: "KERNEL_NOT_FOUND" });
    return view(kernel);
  }

  async function refuseInUse(name: string): Promise<void> {
    const users = await listKernelUsers(db, name);
    const parts = [listOf("image", users.images), listOf("VM", users.vms), listOf("snapshot", users.snapshots)];
    if (parts.some((part) => part !== "")) {
      throw new FailedPreconditionError(
        `kernel "${name}" is used by ${parts.filter((part) => part !== "").join(" and ")}; it cannot be replaced`,
        {
          reason: "KERNEL_IN_USE",
        },
      );
    }
  }

  let hostImport: Promise<{ kernel: KernelRecord; imported?: string }> | undefined;

  return {
    dir: (name) => shelf.dir(name),
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
        kind: "kernel",
        kernel: await importKernel(shelf, op, {
          name,
          plan: () => planImport(sourceDir),
          setDefault: req.setDefault,
          replace: req.replace,
          modules: "all",
        }),
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
      await readStaticBusybox(shelf.busybox);
      return operations.start("build-initramfs", kernel.name, async (op) => ({
        kind: "kernel",
        kernel: await initramfsFor(shelf, op, kernel),
      }));
    },

    async ensureDefault(op) {
      const current = await getDefaultKernel(db);
      if (current) return { kernel: current };
      // Two creates on a fresh machine share one import.
      hostImport ??= importHostKernel(shelf, op, { root: deps.hostRoot ?? "/", release: deps.hostRelease }).finally(
        () => (hostImport = undefined),
      );
      return hostImport;
    },

    async delete(name) {
      validKernelName(name);
      const { existed, old } = await shelf.underPublishLock(async () => {
        // Refused while in use, naming the images and VMs; the files stay then.
        const deleted = await deleteKernel(db, name);
        return { existed: deleted, old: await moveAside(shelf, name) };
      });
      if (old) await removeQuietly(logger, old, name);
      if (existed) logger.info({ kernel: name }, "kernel deleted");
      return { existed };
    },
  };
}

function listOf(noun: string, names: readonly string[]): string {
  if (names.length === 0) return "";
  return `${noun}${names.length === 1 ? "" : "s"} ${names.join(", ")}`;
}
