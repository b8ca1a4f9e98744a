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

/** Names of the snapshots that need an image or a kernel, sorted. */
export async function listSnapshotsUsing(
  db: Kysely<Database>,
  what: "image_name" | "kernel_name",
  name: string,
): Promise<string[]> {
  const rows = await db.selectFrom("snapshots").select("name").where(what, "=", name).orderBy("name").execute();
  return rows.map((row) => row.name);
}

export interface KernelUsers {
  /** Images that name it as their default kernel. */
  readonly images: string[];
  /** VMs that boot it. */
  readonly vms: string[];
  /** Snapshots of VMs that booted it. */
  readonly snapshots: string[];
}

/** The images, VMs and snapshots that use a kernel, each sorted by name. */
export async function listKernelUsers(db: Kysely<Database>, kernel: string): Promise<KernelUsers> {
  const images = await db
    .selectFrom("images")
    .select("name")
    .where("default_kernel", "=", kernel)
    .orderBy("name")
    .execute();
  const vms = await db.selectFrom("vms").select("name").where("kernel_name", "=", kernel).orderBy("name").execute();
  return {
    images: images.map((row) => row.name),
    vms: vms.map((row) => row.name),
    snapshots: await listSnapshotsUsing(db, "kernel_name", kernel),
  };
}
