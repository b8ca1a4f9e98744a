/**
 * The one place where SQLite constraint failures become typed domain errors.
 * The schema enforces the rules (unique names and addresses, references that
 * must exist, rows that cannot be deleted while referenced); this file only
 * says what a failed rule means to a user. Anything else is returned as is.
 */
import {
  AlreadyExistsError,
  type BangerError,
  FailedPreconditionError,
  NotFoundError,
  type Reason,
} from "@banger/common";
import Sqlite from "better-sqlite3";
import type { Kysely } from "kysely";
import { imageExists, kernelExists, listImageUsers, listKernelUsers, listSnapshotsUsing } from "./references.js";
import type { Database, TableName } from "./schema.js";

/** The write that failed, with the column values it tried to store (for messages). */
export type StoreWrite =
  | {
      readonly action: "insert" | "update";
      readonly table: TableName;
      readonly values: Readonly<Record<string, unknown>>;
    }
  | { readonly action: "delete"; readonly table: TableName; readonly key: string };

type Values = Readonly<Record<string, unknown>>;

/** Unique columns, as SQLite names them in "UNIQUE constraint failed: <table>.<column>". */
const UNIQUE_RULES: Readonly<Record<string, (values: Values, cause: Error) => BangerError>> = {
  "vms.name": (v, cause) =>
    new AlreadyExistsError(`a VM named ${show(v["name"])} already exists`, { reason: "VM_NAME_TAKEN", cause }),
  "vms.id": (v, cause) =>
    new AlreadyExistsError(`a VM with id ${show(v["id"])} already exists`, { reason: "VM_ID_TAKEN", cause }),
  "vms.guest_ip": (v, cause) =>
    new AlreadyExistsError(`guest IP ${show(v["guest_ip"])} is already assigned to another VM`, {
      reason: "ADDRESS_TAKEN",
      cause,
    }),
  "vms.mac": (v, cause) =>
    new AlreadyExistsError(`MAC address ${show(v["mac"])} is already assigned to another VM`, {
      reason: "ADDRESS_TAKEN",
      cause,
    }),
  "vms.vsock_cid": (v, cause) =>
    new AlreadyExistsError(`vsock CID ${show(v["vsock_cid"])} is already assigned to another VM`, {
      reason: "ADDRESS_TAKEN",
      cause,
    }),
  "images.name": (v, cause) =>
    new AlreadyExistsError(`an image named ${show(v["name"])} already exists`, { reason: "IMAGE_NAME_TAKEN", cause }),
  "kernels.name": (v, cause) =>
    new AlreadyExistsError(`a kernel named ${show(v["name"])} already exists`, { reason: "KERNEL_NAME_TAKEN", cause }),
  "snapshots.name": (v, cause) =>
    new AlreadyExistsError(`a snapshot named ${show(v["name"])} already exists`, {
      reason: "SNAPSHOT_NAME_TAKEN",
      cause,
    }),
  "operations.id": (v, cause) =>
    new AlreadyExistsError(`operation ${show(v["id"])} already exists`, { reason: "OPERATION_ID_TAKEN", cause }),
};

interface Reference {
  readonly column: string;
  readonly noun: string;
  readonly reason: Reason;
  readonly exists: (db: Kysely<Database>, name: string) => Promise<boolean>;
}

/** Columns that must name an existing row (FOREIGN KEY … ON DELETE RESTRICT). */
const REFERENCES: Readonly<Partial<Record<TableName, readonly Reference[]>>> = {
  vms: [
    { column: "image_name", noun: "image", reason: "IMAGE_NOT_FOUND", exists: imageExists },
    { column: "kernel_name", noun: "kernel", reason: "KERNEL_NOT_FOUND", exists: kernelExists },
  ],
  images: [{ column: "default_kernel", noun: "kernel", reason: "KERNEL_NOT_FOUND", exists: kernelExists }],
  snapshots: [
    { column: "image_name", noun: "image", reason: "IMAGE_NOT_FOUND", exists: imageExists },
    { column: "kernel_name", noun: "kernel", reason: "KERNEL_NOT_FOUND", exists: kernelExists },
  ],
};

/** Rows that others reference, and what to say when deleting one is refused. */
const IN_USE: Readonly<
  Partial<Record<TableName, (db: Kysely<Database>, key: string, cause: Error) => Promise<BangerError>>>
> = {
  images: async (db, name, cause) => {
    const parts = [
      list("VM", await listImageUsers(db, name)),
      list("snapshot", await listSnapshotsUsing(db, "image_name", name)),
    ];
    const users = parts.filter((part) => part !== "").join(" and ") || "a VM or snapshot";
    return new FailedPreconditionError(`image "${name}" is used by ${users}; delete them first`, {
      reason: "IMAGE_IN_USE",
      cause,
    });
  },
  kernels: async (db, name, cause) => {
    const users = await listKernelUsers(db, name);
    const parts = [list("image", users.images), list("VM", users.vms), list("snapshot", users.snapshots)].filter(
      (part) => part !== "",
    );
    return new FailedPreconditionError(
      `kernel "${name}" is used by ${parts.join(" and ") || "an image, VM or snapshot"}`,
      {
        reason: "KERNEL_IN_USE",
        cause,
      },
    );
  },
};

/**
 * Turns a SQLite constraint failure of `write` into the domain error it
 * stands for; returns any other error unchanged. Foreign-key failures do not
 * say which key failed, so it looks (in the same connection or transaction).
 */
export async function translateSqliteError(db: Kysely<Database>, error: unknown, write: StoreWrite): Promise<unknown> {
  if (!(error instanceof Sqlite.SqliteError) || !error.code.startsWith("SQLITE_CONSTRAINT")) return error;

  const unique = /^UNIQUE constraint failed: (\w+\.\w+)/.exec(error.message);
  if (unique?.[1] !== undefined) {
    const rule = UNIQUE_RULES[unique[1]];
    return rule === undefined || write.action === "delete" ? error : rule(write.values, error);
  }

  if (error.message.startsWith("FOREIGN KEY constraint failed")) {
    if (write.action === "delete") {
      const inUse = IN_USE[write.table];
      return inUse === undefined ? error : await inUse(db, write.key, error);
    }
    for (const reference of REFERENCES[write.table] ?? []) {
      const name = write.values[reference.column];
      if (typeof name === "string" && !(await reference.exists(db, name))) {
        return new NotFoundError(`${reference.noun} "${name}" does not exist`, {
          reason: reference.reason,
          cause: error,
        });
      }
    }
  }
  return error;
}

/** Runs one write, translating a constraint failure with translateSqliteError. */
export async function guardWrite<T>(db: Kysely<Database>, write: StoreWrite, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    throw await translateSqliteError(db, error, write);
  }
}

function show(value: unknown): string {
  return typeof value === "string" ? `"${value}"` : String(value);
}

function list(noun: string, names: readonly string[]): string {
  if (names.length === 0) return "";
  return `${noun}${names.length === 1 ? "" : "s"} ${names.join(", ")}`;
}
