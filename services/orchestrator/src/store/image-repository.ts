import type { Insertable, Kysely, Selectable } from "kysely";
import {
  fromTimestamp,
  type JsonObject,
  oneOf,
  parseJsonObject,
  stringArrayField,
  stringField,
  toJson,
  toTimestamp,
} from "./columns.js";
import { guardWrite } from "./errors.js";
import type { ImageTable } from "./image.table.js";
import type { Database } from "./schema.js";

export { listImageUsers } from "./references.js";

export const IMAGE_SOURCES = ["pulled", "registered", "promoted", "builtin"] as const;
export type ImageSource = (typeof IMAGE_SOURCES)[number];

/** The parts of an OCI image config banger keeps. */
export interface ImageConfig {
  readonly entrypoint: readonly string[];
  readonly cmd: readonly string[];
  /** "KEY=value" each. */
  readonly env: readonly string[];
  /** "" = root. */
  readonly user: string;
  /** "" = "/". */
  readonly workingDir: string;
}

export const EMPTY_IMAGE_CONFIG: ImageConfig = { entrypoint: [], cmd: [], env: [], user: "", workingDir: "" };

/** A published image, as stored. */
export interface ImageRecord {
  readonly name: string;
  /** OCI reference it was pulled from; null when registered or promoted. */
  readonly reference: string | null;
  /** Manifest digest it was built from; null when not pulled. */
  readonly manifestDigest: string | null;
  readonly platform: string;
  readonly rootfsBytes: number;
  /** 0 when it has no work seed. */
  readonly workSeedBytes: number;
  /** null = the host's default kernel. */
  readonly defaultKernel: string | null;
  readonly source: ImageSource;
  readonly config: ImageConfig;
  readonly createdAt: Date;
}

/** Errors: AlreadyExistsError IMAGE_NAME_TAKEN, NotFoundError KERNEL_NOT_FOUND (default kernel). */
export async function insertImage(db: Kysely<Database>, image: ImageRecord): Promise<ImageRecord> {
  const row: Insertable<ImageTable> = {
    name: image.name,
    reference: image.reference,
    manifest_digest: image.manifestDigest,
    platform: image.platform,
    rootfs_bytes: image.rootfsBytes,
    work_seed_bytes: image.workSeedBytes,
    default_kernel: image.defaultKernel,
    source: image.source,
    config: toJson(imageConfigToJson(image.config)),
    created_at: toTimestamp(image.createdAt),
  };
  const inserted = await guardWrite(db, { action: "insert", table: "images", values: row }, () =>
    db.insertInto("images").values(row).returningAll().executeTakeFirstOrThrow(),
  );
  return imageFromRow(inserted);
}

export async function getImage(db: Kysely<Database>, name: string): Promise<ImageRecord | undefined> {
  const row = await db.selectFrom("images").selectAll().where("name", "=", name).executeTakeFirst();
  return row && imageFromRow(row);
}

/** Every image, by name. */
export async function listImages(db: Kysely<Database>): Promise<ImageRecord[]> {
  const rows = await db.selectFrom("images").selectAll().orderBy("name").execute();
  return rows.map(imageFromRow);
}

/**
 * Deletes the image's row; false if there was none. Errors:
 * FailedPreconditionError IMAGE_IN_USE while a VM was made from it.
 */
export async function deleteImage(db: Kysely<Database>, name: string): Promise<boolean> {
  const result = await guardWrite(db, { action: "delete", table: "images", key: name }, () =>
    db.deleteFrom("images").where("name", "=", name).executeTakeFirst(),
  );
  return result.numDeletedRows > 0n;
}

/** An image's config as stored (in its row and in operation results). */
export function imageConfigToJson(config: ImageConfig): JsonObject {
  return {
    entrypoint: [...config.entrypoint],
    cmd: [...config.cmd],
    env: [...config.env],
    user: config.user,
    workingDir: config.workingDir,
  };
}

function imageFromRow(row: Selectable<ImageTable>): ImageRecord {
  const at = (column: string) => `images.${column} of image "${row.name}"`;
  return {
    name: row.name,
    reference: row.reference,
    manifestDigest: row.manifest_digest,
    platform: row.platform,
    rootfsBytes: row.rootfs_bytes,
    workSeedBytes: row.work_seed_bytes,
    defaultKernel: row.default_kernel,
    source: oneOf(IMAGE_SOURCES, row.source, at("source")),
    config: imageConfigFromJson(parseJsonObject(row.config, at("config")), at("config")),
    createdAt: fromTimestamp(row.created_at, at("created_at")),
  };
}

export function imageConfigFromJson(config: JsonObject, where: string): ImageConfig {
  return {
    entrypoint: stringArrayField(config, "entrypoint", where),
    cmd: stringArrayField(config, "cmd", where),
    env: stringArrayField(config, "env", where),
    user: stringField(config, "user", where),
    workingDir: stringField(config, "workingDir", where),
  };
}
