/**
 * Who references whom: the lookups behind `used_by` lists and behind the
 * messages of reference errors. Kept apart so errors.ts and the repositories
 * can both use them without importing each other.
 */
import type { Kysely } from "kysely";
import type { Database } from "./schema.js";

export async function imageExists(db: Kysely<Database>, name: string): Promise<boolean> {
  const row = await db.selectFrom("images").select("name").where("name", "=", name).executeTakeFirst();
  return row !== undefined;
}

export async function kernelExists(db: Kysely<Database>, name: string): Promise<boolean> {
  const row = await db.selectFrom("kernels").select("name").where("name", "=", name).executeTakeFirst();
  return row !== undefined;
}

/** Names of the VMs made from an image, sorted. */
export async function listImageUsers(db: Kysely<Database>, image: string): Promise<string[]> {
  const rows = await db.selectFrom("vms").select("name").where("image_name", "=", image).orderBy("name").execute();
  return rows.map((row) => row.name);
}

export interface KernelUsers {
  /** Images that name it as their default kernel. */
  readonly images: string[];
  /** VMs that boot it. */
  readonly vms: string[];
}

/** The images and VMs that use a kernel, each sorted by name. */
export async function listKernelUsers(db: Kysely<Database>, kernel: string): Promise<KernelUsers> {
  const images = await db
    .selectFrom("images")
    .select("name")
    .where("default_kernel", "=", kernel)
    .orderBy("name")
    .execute();
  const vms = await db.selectFrom("vms").select("name").where("kernel_name", "=", kernel).orderBy("name").execute();
  return { images: images.map((row) => row.name), vms: vms.map((row) => row.name) };
}
