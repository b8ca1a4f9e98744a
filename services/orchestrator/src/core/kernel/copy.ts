/**
 * A kernel's files copied into a staging directory (reflink when the file
 * system can): the kernel (a compressed one replaced by the vmlinux inside it
 * when banger can extract one), its initrd, and its modules (all, or only
 * those banger's initramfs loads), measured for the row.
 */
import { constants, createReadStream } from "node:fs";
import { copyFile, cp, mkdir, open, rm, stat, writeFile } from "node:fs/promises";
import { createHash } from "node:crypto";
import { dirname, join } from "node:path";
import { FailedPreconditionError, type Logger } from "@banger/common";
import { kernelDirFiles } from "@banger/common/layout";
import type { KernelRecord } from "../../store/index.js";
import { planModules, readModuleIndex } from "../../guest/initramfs.js";
import { extractVmlinux } from "../../guest/vmlinux.js";
import { errnoOf, type ImportPlan } from "./source.js";
import { CommonReason } from "@banger/common/reasons";

/** Which of a kernel's modules to copy: all of them, or only those banger's initramfs loads (and the index files). */
export type ModuleChoice = "all" | "initramfs";

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
export type Copied = Pick<KernelRecord, "kernelSha256" | "kernelBytes" | "uncompressed" | "initrdBytes" | "hasModules">;

/** Copies the plan's files into `staging` (reflink when possible): kernel, initrd, modules/. */
export async function copyInto(staging: string, plan: ImportPlan, modules: ModuleChoice): Promise<Copied> {
  await mkdir(staging, { recursive: true, mode: 0o700 });
  const staged = kernelDirFiles(staging);
  const uncompressed = await isElf(plan.kernel);
  const kernel = staged.kernel(uncompressed);
  await copyFile(plan.kernel, kernel, constants.COPYFILE_FICLONE);
  let initrdBytes = 0;
  if (plan.initrd !== null) {
    await copyFile(plan.initrd, staged.initrd, constants.COPYFILE_FICLONE);
    initrdBytes = (await stat(staged.initrd)).size;
  }
  if (plan.modules !== null && modules === "initramfs") {
    await copyInitramfsModules(plan.modules, staged.modules);
  } else if (plan.modules !== null) {
    await cp(plan.modules, staged.modules, {
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

export async function sha256Of(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return `sha256:${hash.digest("hex")}`;
}

/**
 * Replaces the staged vmlinuz by the vmlinux inside it, when banger can
 * extract one; otherwise the vmlinuz stays (QEMU boots it; Firecracker cannot).
 */
export async function extractInto(
  staging: string,
  copied: Copied,
  signal: AbortSignal,
  logger: Logger,
): Promise<Copied> {
  const vmlinuz = kernelDirFiles(staging).kernel(false);
  let extracted: Awaited<ReturnType<typeof extractVmlinux>>;
  try {
    extracted = await extractVmlinux(vmlinuz, { signal });
  } catch (error) {
    if (!(error instanceof FailedPreconditionError && error.reason === CommonReason.HOST_TOOL_MISSING)) throw error;
    logger.warn({ err: error }, "kept the compressed kernel: its decompressor is missing (Firecracker cannot boot it)");
    return copied;
  }
  if ("reason" in extracted) {
    logger.warn({ why: extracted.reason }, "kept the kernel as it is: no vmlinux can be extracted from it");
    return copied;
  }
  const vmlinux = kernelDirFiles(staging).kernel(true);
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
