/**
 * The puller's content-addressed blob cache: `<dir>/sha256/<hex>`.
 *
 * A blob appears under its final name only after its bytes were hashed and
 * counted while being written, matched the digest and size, and were fsynced;
 * the final name is then taken with one rename. Writes go to a temporary file
 * in the same directory (`.<hex>.<pid>.<random>.tmp`), so any number of puts,
 * of the same digest too, can run at once: each has its own temporary file,
 * and the renames replace identical content atomically. A temporary file left
 * by a process that died is removed by the first put of the next process
 * (or by `sweep()`).
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdir, open, readdir, readFile, rename, rm, stat, utimes, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { FailedPreconditionError, NotFoundError } from "@banger/common/errors";
import { processIsAlive } from "@banger/common/process-info";
import type { BlobBody, BlobCache, GrowingBlob } from "../core/ports.js";
import { GrowingFile } from "./growing-blob.js";
import { blobTruncated, DigestMismatchError, digestHex, sha256Digest } from "./digest.js";

/**
 * Temporary files (full paths) of puts still running in this process, across
 * every cache object, so that one cache's sweep never takes another's file.
 */
const running = new Set<string>();
const TEMP_NAME = /^\.([a-f0-9]{64})\.([0-9]+)\.([a-f0-9]+)\.tmp$/;
const DEFAULT_READ_LIMIT = 16 * 1024 * 1024;

async function writeAll(file: FileHandle, chunk: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < chunk.byteLength) {
    const { bytesWritten } = await file.write(chunk, offset, chunk.byteLength - offset);
    offset += bytesWritten;
  }
}

async function cancelBody(body: BlobBody): Promise<void> {
  if (body instanceof ReadableStream) {
    await body.cancel().catch(() => {});
    return;
  }
  if (Symbol.asyncIterator in body) {
    await body[Symbol.asyncIterator]()
      .return?.()
      .catch(() => {});
  } else {
    body[Symbol.iterator]().return?.();
  }
}

/** One cache's state: its blob directory, and its first sweep (run once, before the first put). */
interface CacheDir {
  readonly blobDir: string;
  firstSweep?: Promise<number>;
}

export function createBlobCache(dir: string): BlobCache {
  const cache: CacheDir = { blobDir: join(dir, "sha256") };
  return {
    dir,
    path: (digest) => blobPath(cache, digest),
    has: (digest) => has(cache, digest),
    put: (digest, size, body, onProgress, onWriting) => put(cache, digest, size, body, onProgress, onWriting),
    read: (digest, maxBytes) => read(cache, digest, maxBytes),
    sweep: () => sweep(cache),
    touch: (digests) => touch(cache, digests),
    prune: (before, inUse) => prune(cache, before, inUse),
  };
}

const blobPath = (cache: CacheDir, digest: string): string => join(cache.blobDir, digestHex(digest));

async function sweep({ blobDir }: CacheDir): Promise<number> {
  let names: string[];
  try {
    names = await readdir(blobDir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return 0;
    throw error;
  }
  let removed = 0;
  for (const name of names) {
    const match = TEMP_NAME.exec(name);
    if (match === null) continue;
    const pid = Number(match[2]);
    const ours = pid === process.pid;
    if (ours ? running.has(join(blobDir, name)) : processIsAlive(pid)) continue;
    await rm(join(blobDir, name), { force: true });
    removed += 1;
  }
  return removed;
}

async function has(cache: CacheDir, digest: string): Promise<boolean> {
  try {
    return (await stat(blobPath(cache, digest))).isFile();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw error;
  }
}

async function put(
  cache: CacheDir,
  digest: string,
  size: number,
  body: BlobBody,
  onProgress?: (doneBytes: number) => void,
  onWriting?: (blob: GrowingBlob) => void,
): Promise<string> {
  const hex = digestHex(digest);
  if (!Number.isSafeInteger(size) || size < 0) {
    await cancelBody(body);
    throw new FailedPreconditionError(`blob ${digest} has an invalid size ${size}`, { reason: "INVALID_DESCRIPTOR" });
  }
  const finalPath = join(cache.blobDir, hex);
  await mkdir(cache.blobDir, { recursive: true, mode: 0o755 });
  cache.firstSweep ??= sweep(cache);
  await cache.firstSweep;
  if (await has(cache, digest)) {
    await cancelBody(body);
    return finalPath;
  }
  return writeVerified(cache.blobDir, digest, size, body, onProgress, onWriting);
}

/** Writes `body` to a temporary file of its own, hashing and counting it, and renames it to the blob's name once it matches. */
async function writeVerified(
  blobDir: string,
  digest: string,
  size: number,
  body: BlobBody,
  onProgress?: (doneBytes: number) => void,
  onWriting?: (blob: GrowingBlob) => void,
): Promise<string> {
  const hex = digestHex(digest);
  const finalPath = join(blobDir, hex);
  const tempName = `.${hex}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
  const tempPath = join(blobDir, tempName);
  running.add(tempPath);
  let file: FileHandle | undefined;
  const growing = onWriting && new GrowingFile(tempPath, finalPath);
  try {
    file = await open(tempPath, "wx", 0o644);
    if (growing) onWriting?.(growing);
    const hash = createHash("sha256");
    let done = 0;
    for await (const chunk of body) {
      done += chunk.byteLength;
      if (done > size) {
        throw new DigestMismatchError(`blob ${digest} is longer than the ${size} bytes its descriptor says`, digest);
      }
      hash.update(chunk);
      await writeAll(file, chunk);
      growing?.advance(done);
      onProgress?.(done);
    }
    if (done < size) throw blobTruncated(digest, done, size);
    const actual = `sha256:${hash.digest("hex")}`;
    if (actual !== digest) {
      throw new DigestMismatchError(`blob ${digest} arrived with content that hashes to ${actual}`, digest, actual);
    }
    await file.sync();
    await file.close();
    file = undefined;
    await rename(tempPath, finalPath);
    const directory = await open(blobDir, "r");
    try {
      await directory.sync();
    } finally {
      await directory.close();
    }
    growing?.finish();
    return finalPath;
  } catch (error) {
    await file?.close().catch(() => {});
    await rm(tempPath, { force: true });
    growing?.fail(error);
    throw error;
  } finally {
    running.delete(tempPath);
  }
}

async function read(cache: CacheDir, digest: string, maxBytes = DEFAULT_READ_LIMIT): Promise<Buffer> {
  const where = blobPath(cache, digest);
  const info = await stat(where).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== "ENOENT") throw error;
    throw new NotFoundError(`blob ${digest} is not in the cache`, { reason: "BLOB_NOT_CACHED", cause: error });
  });
  if (info.size > maxBytes) {
    throw new FailedPreconditionError(`blob ${digest} is ${info.size} bytes, more than the ${maxBytes} allowed here`, {
      reason: "BLOB_TOO_LARGE",
    });
  }
  const bytes = await readFile(where);
  const actual = sha256Digest(bytes);
  if (actual !== digest) {
    await rm(where, { force: true });
    throw new DigestMismatchError(
      `cached blob ${digest} was damaged (it hashes to ${actual}); removed it`,
      digest,
      actual,
    );
  }
  return bytes;
}

async function touch(cache: CacheDir, digests: readonly string[]): Promise<void> {
  const now = new Date();
  for (const digest of digests) await utimes(blobPath(cache, digest), now, now).catch(() => undefined);
}

async function prune(
  cache: CacheDir,
  before: Date,
  inUse: ReadonlySet<string>,
): Promise<{ removed: number; freedBytes: number }> {
  const { blobDir } = cache;
  await sweep(cache);
  let removed = 0;
  let freedBytes = 0;
  for (const name of await readdir(blobDir).catch(() => [])) {
    if (!/^[a-f0-9]{64}$/.test(name) || inUse.has(`sha256:${name}`)) continue;
    const info = await stat(join(blobDir, name)).catch(() => undefined);
    if (info === undefined || !info.isFile() || info.mtime >= before) continue;
    await rm(join(blobDir, name), { force: true });
    removed += 1;
    freedBytes += info.size;
  }
  return { removed, freedBytes };
}
