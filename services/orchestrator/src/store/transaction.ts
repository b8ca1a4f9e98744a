import type { Kysely } from "kysely";
import type { Database } from "./schema.js";

/**
 * Runs `work` in a transaction, or inside the caller's when `db` already is
 * one (kysely transactions do not nest), so a repository function that needs
 * atomicity still composes into a larger transaction.
 */
export async function inTransaction<T>(db: Kysely<Database>, work: (trx: Kysely<Database>) => Promise<T>): Promise<T> {
  return db.isTransaction ? work(db) : db.transaction().execute(work);
}
