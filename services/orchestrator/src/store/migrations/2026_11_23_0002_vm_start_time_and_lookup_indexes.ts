/**
 * - `vms.started_at`: when a VM last started (the API's `Vm.start_time`).
 * - Indexes on the referencing columns, so that deleting an image or kernel
 *   (which SQLite checks against every referencing row) and listing what uses
 *   one do not scan the VM table, and on operations for ListOperations.
 */
import type { Kysely } from "kysely";

export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable("vms").addColumn("started_at", "text").execute();

  await db.schema.createIndex("vms_image_name").on("vms").column("image_name").execute();
  await db.schema.createIndex("vms_kernel_name").on("vms").column("kernel_name").execute();
  await db.schema.createIndex("images_default_kernel").on("images").column("default_kernel").execute();

  await db.schema.createIndex("operations_created_at").on("operations").column("created_at").execute();
  await db.schema.createIndex("operations_target").on("operations").columns(["target", "created_at"]).execute();
}
