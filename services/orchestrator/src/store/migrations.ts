/**
 * Schema migrations, listed in code (no directory scanning: the bundle and the
 * tests see exactly these). Names are `YYYY_MM_DD_NNNN_what`; kysely applies
 * them in name order and records each in its `kysely_migration` table.
 */
import { inspect } from "node:util";
import { FailedPreconditionError, InternalError } from "@banger/common";
import { type Kysely, type Migration, Migrator } from "kysely";
import * as initial from "./migrations/2026_11_23_0001_initial.js";
import * as vmStartTimeAndLookupIndexes from "./migrations/2026_11_23_0002_vm_start_time_and_lookup_indexes.js";
import * as operationResultsAsDomainRecords from "./migrations/2026_12_07_0003_operation_results_as_domain_records.js";
import * as vmPublishedPorts from "./migrations/2026_12_07_0004_vm_published_ports.js";
import * as snapshots from "./migrations/2026_12_07_0005_snapshots.js";
import type { Database } from "./schema.js";

export const MIGRATIONS: Readonly<Record<string, Migration>> = {
  "2026_11_23_0001_initial": initial,
  "2026_11_23_0002_vm_start_time_and_lookup_indexes": vmStartTimeAndLookupIndexes,
  "2026_12_07_0003_operation_results_as_domain_records": operationResultsAsDomainRecords,
  "2026_12_07_0004_vm_published_ports": vmPublishedPorts,
  "2026_12_07_0005_snapshots": snapshots,
};

/** kysely's default name, spelled out because the newer-database check reads it. */
export const MIGRATION_TABLE = "kysely_migration";

type MigrationTables = {
  [MIGRATION_TABLE]: { name: string; timestamp: string };
};

/**
 * Brings the database at `path` up to the latest of `migrations` and returns
 * the names it applied. A database that has migrations this code does not
 * know was written by a newer banger: it is refused untouched.
 */
export async function migrateToLatest(
  db: Kysely<Database>,
  path: string,
  migrations: Readonly<Record<string, Migration>> = MIGRATIONS,
): Promise<string[]> {
  const unknown = (await appliedMigrations(db)).filter((name) => !Object.hasOwn(migrations, name));
  if (unknown.length > 0) {
    throw new FailedPreconditionError(
      `database ${path} was written by a newer banger (unknown migration${unknown.length === 1 ? "" : "s"} ` +
        `${unknown.join(", ")}); upgrade banger, or move the file away to start afresh`,
      { reason: "DATABASE_TOO_NEW" },
    );
  }

  const migrator = new Migrator({
    db,
    provider: { getMigrations: () => Promise.resolve({ ...migrations }) },
    migrationTableName: MIGRATION_TABLE,
  });
  const { error, results = [] } = await migrator.migrateToLatest();
  if (error !== undefined) {
    const failed = results.find((result) => result.status === "Error")?.migrationName;
    const detail = error instanceof Error ? error.message : inspect(error);
    throw new InternalError(`upgrading database ${path}${failed ? ` (migration ${failed})` : ""} failed: ${detail}`, {
      reason: "DATABASE_MIGRATION_FAILED",
      cause: error,
    });
  }
  return results.filter((result) => result.status === "Success").map((result) => result.migrationName);
}

/** Names recorded in the migration table; none for a fresh file. */
export async function appliedMigrations(db: Kysely<Database>): Promise<string[]> {
  const tables = await db.introspection.getTables({ withInternalKyselyTables: true });
  if (!tables.some((table) => table.name === MIGRATION_TABLE)) return [];
  const rows = await db
    .withTables<MigrationTables>()
    .selectFrom(MIGRATION_TABLE)
    .select("name")
    .orderBy("name")
    .execute();
  return rows.map((row) => row.name);
}
