/**
 * - `vms.published_ports`: the host ports a VM publishes (`vm create -p`, `vm port add`), a JSON
 *   array of `{ hostIp, hostPort, guestPort, protocol }`; `[]` for the VMs that were there.
 */
import { sql, type Kysely } from "kysely";

export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .alterTable("vms")
    .addColumn("published_ports", "text", (column) => column.notNull().defaultTo(sql`'[]'`))
    .execute();
}
