/**
 * The orchestrator's durable state: one SQLite file (DESIGN §5), opened with
 * WAL, foreign keys on, a busy timeout and synchronous=NORMAL (durable across
 * process crashes; a power cut may lose the last commits, never corrupt the
 * file), and migrated to the latest schema before anything else uses it.
 */
import { FailedPreconditionError, InternalError } from "@banger/common";
import Sqlite from "better-sqlite3";
import { Kysely, SqliteAdapter, SqliteDialect } from "kysely";
import { migrateToLatest } from "./migrations.js";
import type { Database } from "./schema.js";

export interface Store {
  /** The database file. */
  readonly path: string;
  /** Typed query builder; used by the repositories, not by the rest of the orchestrator. */
  readonly db: Kysely<Database>;
  /** Checkpoints and closes the file. */
  close(): Promise<void>;
}

const BUSY_TIMEOUT_MS = 5_000;

/** Opens (creating if needed) the database at `path` and upgrades it in place. */
export async function openStore(path: string): Promise<Store> {
  const db = openDatabase(path);
  try {
    await migrateToLatest(db, path);
  } catch (error) {
    await db.destroy();
    throw error;
  }
  return { path, db, close: () => db.destroy() };
}

/**
 * The database at `path`, configured but not migrated. openStore is the way
 * in; this is exported for tests that build older schemas.
 */
export function openDatabase(path: string): Kysely<Database> {
  return new Kysely<Database>({ dialect: new MigratingSqliteDialect({ database: openSqlite(path) }) });
}

function openSqlite(path: string): Sqlite.Database {
  let sqlite: Sqlite.Database | undefined;
  try {
    sqlite = new Sqlite(path, { timeout: BUSY_TIMEOUT_MS });
    sqlite.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    const mode = sqlite.pragma("journal_mode = WAL", { simple: true });
    if (mode !== "wal") throw new Error(`journal_mode is ${String(mode)}, not wal`);
    sqlite.pragma("synchronous = NORMAL");
    sqlite.pragma("foreign_keys = ON");
    return sqlite;
  } catch (error) {
    sqlite?.close();
    const detail = error instanceof Error ? error.message : String(error);
    if (error instanceof Sqlite.SqliteError && (error.code === "SQLITE_NOTADB" || error.code === "SQLITE_CORRUPT")) {
      throw new FailedPreconditionError(`${path} is not a usable SQLite database: ${detail}`, {
        reason: "DATABASE_UNREADABLE",
        cause: error,
      });
    }
    throw new InternalError(`cannot open database ${path}: ${detail}`, {
      reason: "DATABASE_UNAVAILABLE",
      cause: error,
    });
  }
}

/**
 * SQLite can roll back schema changes, but kysely's SQLite adapter says it
 * cannot, so its Migrator would apply migrations one statement at a time.
 * Claiming transactional DDL makes it run all pending migrations in one
 * transaction: an upgrade that fails half-way leaves the file as it was.
 * (A future migration that must rebuild a table with foreign_keys=OFF has to
 * do so differently: that pragma is ignored inside a transaction.)
 */
class TransactionalDdlSqliteAdapter extends SqliteAdapter {
  override get supportsTransactionalDdl(): boolean {
    return true;
  }
}

class MigratingSqliteDialect extends SqliteDialect {
  override createAdapter(): SqliteAdapter {
    return new TransactionalDdlSqliteAdapter();
  }
}
