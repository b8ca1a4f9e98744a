import { NotFoundError } from "@banger/common";
import type { Insertable, Kysely, Selectable } from "kysely";
import { fromFlag, fromTimestamp, toFlag, toTimestamp } from "./columns.js";
import { inTransaction } from "./transaction.js";
import { guardWrite } from "./errors.js";
import type { KernelTable } from "./kernel.table.js";
import type { Database } from "./schema.js";

export { type KernelUsers, listKernelUsers } from "./references.js";

/** A kernel in the catalog, as stored. */
export interface KernelRecord {
  readonly name: string;
  /** Kernel release; "" if unknown. */
  readonly version: string;
  /** "sha256:…" of the kernel file. */
  readonly kernelSha256: string;
  readonly kernelBytes: number;
  /** Whether the kernel file is an uncompressed vmlinux. */
  readonly uncompressed: boolean;
  /** 0 when there is no initrd. */
  readonly initrdBytes: number;
  readonly hasModules: boolean;
  /** Whether it is the host's default kernel (at most one is). */
  readonly isDefault: boolean;
  readonly createdAt: Date;
}

/**
 * Inserts a kernel; when `isDefault`, it takes over as the default in the
 * same transaction. Errors: AlreadyExistsError KERNEL_NAME_TAKEN.
 */
export async function insertKernel(db: Kysely<Database>, kernel: KernelRecord): Promise<KernelRecord> {
  const row: Insertable<KernelTable> = {
    name: kernel.name,
    version: kernel.version,
    kernel_sha256: kernel.kernelSha256,
    kernel_bytes: kernel.kernelBytes,
    uncompressed: toFlag(kernel.uncompressed),
    initrd_bytes: kernel.initrdBytes,
    has_modules: toFlag(kernel.hasModules),
    is_default: toFlag(kernel.isDefault),
    created_at: toTimestamp(kernel.createdAt),
  };
  return inTransaction(db, async (trx) => {
    if (kernel.isDefault) await clearDefault(trx);
    const inserted = await guardWrite(trx, { action: "insert", table: "kernels", values: row }, () =>
      trx.insertInto("kernels").values(row).returningAll().executeTakeFirstOrThrow(),
    );
    return kernelFromRow(inserted);
  });
}

/**
 * Puts a kernel in place of the one of the same name, if any, in one
 * transaction: the old row goes, the new one comes in. The new one is the
 * default when `kernel.isDefault` says so or when the old one was. Returns
 * the new row and the old one. Errors: FailedPreconditionError KERNEL_IN_USE
 * while an image or VM uses the old one (nothing changes).
 */
export async function replaceKernel(
  db: Kysely<Database>,
  kernel: KernelRecord,
): Promise<{ kernel: KernelRecord; replaced: KernelRecord | undefined }> {
  return inTransaction(db, async (trx) => {
    const replaced = await getKernel(trx, kernel.name);
    if (replaced !== undefined) await deleteKernel(trx, kernel.name);
    const inserted = await insertKernel(trx, {
      ...kernel,
      isDefault: kernel.isDefault || replaced?.isDefault === true,
    });
    return { kernel: inserted, replaced };
  });
}

export async function getKernel(db: Kysely<Database>, name: string): Promise<KernelRecord | undefined> {
  const row = await db.selectFrom("kernels").selectAll().where("name", "=", name).executeTakeFirst();
  return row && kernelFromRow(row);
}

export async function getDefaultKernel(db: Kysely<Database>): Promise<KernelRecord | undefined> {
  const row = await db.selectFrom("kernels").selectAll().where("is_default", "=", 1).executeTakeFirst();
  return row && kernelFromRow(row);
}

/** Every kernel, by name. */
export async function listKernels(db: Kysely<Database>): Promise<KernelRecord[]> {
  const rows = await db.selectFrom("kernels").selectAll().orderBy("name").execute();
  return rows.map(kernelFromRow);
}

/**
 * Makes `name` the default kernel and the previous default an ordinary one,
 * in one transaction. Errors: NotFoundError KERNEL_NOT_FOUND (nothing changes).
 */
export async function setDefaultKernel(db: Kysely<Database>, name: string): Promise<KernelRecord> {
  return inTransaction(db, async (trx) => {
    await clearDefault(trx);
    const row = await trx
      .updateTable("kernels")
      .set({ is_default: 1 })
      .where("name", "=", name)
      .returningAll()
      .executeTakeFirst();
    // Throwing rolls back clearing the previous default.
    if (row === undefined) throw new NotFoundError(`kernel "${name}" does not exist`, { reason: "KERNEL_NOT_FOUND" });
    return kernelFromRow(row);
  });
}

/**
 * Records the size of a kernel's initrd after its file was replaced (0 = none).
 * Errors: NotFoundError KERNEL_NOT_FOUND.
 */
export async function setKernelInitrdBytes(
  db: Kysely<Database>,
  name: string,
  initrdBytes: number,
): Promise<KernelRecord> {
  const row = await db
    .updateTable("kernels")
    .set({ initrd_bytes: initrdBytes })
    .where("name", "=", name)
    .returningAll()
    .executeTakeFirst();
  if (row === undefined) throw new NotFoundError(`kernel "${name}" does not exist`, { reason: "KERNEL_NOT_FOUND" });
  return kernelFromRow(row);
}

/**
 * Deletes the kernel's row; false if there was none. Errors:
 * FailedPreconditionError KERNEL_IN_USE while an image or VM uses it.
 */
export async function deleteKernel(db: Kysely<Database>, name: string): Promise<boolean> {
  const result = await guardWrite(db, { action: "delete", table: "kernels", key: name }, () =>
    db.deleteFrom("kernels").where("name", "=", name).executeTakeFirst(),
  );
  return result.numDeletedRows > 0n;
}

async function clearDefault(trx: Kysely<Database>): Promise<void> {
  await trx.updateTable("kernels").set({ is_default: 0 }).where("is_default", "=", 1).execute();
}

function kernelFromRow(row: Selectable<KernelTable>): KernelRecord {
  const at = (column: string) => `kernels.${column} of kernel "${row.name}"`;
  return {
    name: row.name,
    version: row.version,
    kernelSha256: row.kernel_sha256,
    kernelBytes: row.kernel_bytes,
    uncompressed: fromFlag(row.uncompressed, at("uncompressed")),
    initrdBytes: row.initrd_bytes,
    hasModules: fromFlag(row.has_modules, at("has_modules")),
    isDefault: fromFlag(row.is_default, at("is_default")),
    createdAt: fromTimestamp(row.created_at, at("created_at")),
  };
}
