/**
 * A layer's bytes as tar entries: decompressed by magic number (zstd in its
 * own process behind a pipe, gzip in zlib, which waits for its reader), read
 * by a tar parser that keeps every byte of names, and what its failures mean.
 */
import { createReadStream } from "node:fs";
import { open } from "node:fs/promises";
import type { Readable, TransformOptions } from "node:stream";
import type { GrowingBlob } from "../core/ports.js";
import { createGunzip, type ZlibOptions } from "node:zlib";
import { BangerError, InvalidArgumentError, ResourceExhaustedError } from "@banger/common/errors";
import { streamProcess, type StreamedRun } from "@banger/common/host-runner";
import tar, { type Header } from "tar-stream";

/**
 * A tar-stream extractor that keeps every byte of names, link targets and pax
 * records. tar-stream reads the header's names in `filenameEncoding`, but pax
 * records (`path`, `linkpath`, `SCHILY.xattr.*`) always as UTF-8, which turns
 * bytes that are not UTF-8 into U+FFFD: a non-UTF-8 name, or a
 * security.capability with a byte of 0x80 or more (cap_setuid), would change.
 * Its pax decoding is internal; this replaces it on this one extractor, and
 * extract.test.ts fails if tar-stream stops calling it.
 */
export function byteExactExtract(): ReturnType<typeof tar.extract> {
  // tar-stream takes filenameEncoding; its types do not list it.
  const extract = tar.extract({ filenameEncoding: "latin1" } as Parameters<typeof tar.extract>[0]);
  const internals = extract as unknown as {
    _header: { type?: string } | null;
    _pax: Record<string, string> | null;
    _paxGlobal: Record<string, string> | null;
    _decodeLongHeader: (buf: Buffer) => void;
  };
  const decodeLongHeader = internals._decodeLongHeader.bind(extract);
  internals._decodeLongHeader = (buf: Buffer) => {
    const type = internals._header?.type;
    if (type === "pax-header") internals._pax = { ...internals._paxGlobal, ...paxRecords(buf) };
    else if (type === "pax-global-header") internals._paxGlobal = paxRecords(buf);
    else decodeLongHeader(buf);
  };
  return extract;
}

/** `<length> <key>=<value>\n` records, values one byte a character; stops at the first malformed one, as tar-stream does. */
export function paxRecords(buf: Buffer): Record<string, string> {
  const records: Record<string, string> = {};
  let rest = buf;
  while (rest.length > 0) {
    const space = rest.indexOf(0x20);
    const length = space > 0 ? Number(rest.toString("latin1", 0, space)) : NaN;
    if (!Number.isSafeInteger(length) || length <= space + 1 || length > rest.length) break;
    const record = rest.toString("latin1", space + 1, length - 1);
    const equals = record.indexOf("=");
    if (equals === -1) break;
    records[record.slice(0, equals)] = record.slice(equals + 1);
    rest = rest.subarray(length);
  }
  return records;
}

/** The entry's mtime in whole seconds: a pax `mtime` (fractional, or beyond ustar's range) over the header's. */
export function mtimeOf(header: Header): number | undefined {
  const pax = Number((header.pax as Record<string, string> | undefined)?.["mtime"]);
  if (Number.isFinite(pax)) return Math.floor(pax);
  const ms = header.mtime?.getTime();
  return ms === undefined || Number.isNaN(ms) ? undefined : Math.floor(ms / 1000);
}

/**
 * Decompressed bytes handed on at a time, and how far zlib (in its own
 * thread) may run ahead of the tree: zlib's defaults (16 KiB, one chunk)
 * cost a third more CPU on a Debian base layer, and keep the two in lockstep.
 */
const GUNZIP_CHUNK = 256 * 1024;
const GUNZIP_AHEAD = 4 * 1024 * 1024;
/** zlib's streams take a Transform's options too. */
const GUNZIP_OPTIONS: ZlibOptions & TransformOptions = { chunkSize: GUNZIP_CHUNK, readableHighWaterMark: GUNZIP_AHEAD };

/**
 * The layer's bytes, decompressed by magic number (gzip, zstd, or a plain
 * tar), read only as fast as they are used: from the blob's path, or from the
 * blob as it downloads (a zstd one once it is downloaded: the tool reads a file).
 */
export async function decompressed(
  blob: string | GrowingBlob,
  signal: AbortSignal,
): Promise<{ stream: Readable; zstd?: StreamedRun }> {
  const magic = Buffer.alloc(4);
  if (typeof blob === "string") {
    const handle = await open(blob, "r");
    await handle.read(magic, 0, 4, 0);
    await handle.close();
  } else {
    (await blob.head(4)).copy(magic);
  }
  if (magic.equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) {
    const blobPath = typeof blob === "string" ? blob : await blob.done;
    // The zstd tool, not a JavaScript decoder: a pipe stops it while the tree is behind (a decoder
    // called from JavaScript turns one input chunk into gigabytes at once), and it is five times
    // faster. Its window is capped at zstd's default, 128 MiB, the most a frame may ask for.
    const zstd = streamProcess(["zstd", "-d", "-c", "-q", "--memory=128MB", "--", blobPath], { signal });
    return { stream: zstd.stdout, zstd };
  }
  const raw = typeof blob === "string" ? createReadStream(blob) : blob.stream();
  if (magic[0] === 0x1f && magic[1] === 0x8b) {
    const gunzip = createGunzip(GUNZIP_OPTIONS);
    // pipe() does not pass on a failure of its source (a download that did not match its digest).
    raw.on("error", (error: Error) => gunzip.destroy(error));
    gunzip.on("close", () => raw.destroy());
    return { stream: raw.pipe(gunzip) };
  }
  return { stream: raw };
}

/** Errors of the layer's bytes themselves (not gzip, not a tar, cut short) become INVALID_ARGUMENT; a full disk, RESOURCE_EXHAUSTED. */
export function layerError(error: unknown): unknown {
  if (error instanceof BangerError || !(error instanceof Error)) return error;
  const code = (error as NodeJS.ErrnoException).code;
  if (code === "ENOSPC" || code === "EDQUOT") {
    return new ResourceExhaustedError(
      `the unpacked image does not fit on the file system of its tree: ${error.message}`,
      {
        reason: "SCRATCH_SPACE_LOW",
        cause: error,
      },
    );
  }
  // zlib's errors carry a Z_ code; tar-stream's are plain Errors ("Invalid tar header", "Unexpected end of data").
  if (code?.startsWith("Z_") || (code === undefined && error.name === "Error")) return malformed(error.message, error);
  return error;
}

export const malformed = (why: string, cause: unknown) =>
  new InvalidArgumentError(`the layer is not a valid tar (plain, gzip or zstd): ${why}`, {
    reason: "MALFORMED_LAYER",
    cause,
  });
