/**
 * Applies one OCI layer to a staging tree without ever following a link or
 * writing outside the tree. Names are kept byte for byte (any byte but `/`
 * and NUL, UTF-8 or not): they are read one byte a character ("latin1"
 * strings) and reach the file system as Buffers. Every entry name is checked
 * (no `..`, no NUL, no component longer than ext4's 255 bytes; a leading `/`
 * is stripped as tar does, so absolute names stay inside),
 * every parent component must be a real directory inside the tree, files are
 * created with O_EXCL | O_NOFOLLOW, hardlinks must point at a regular file
 * already in the tree, reached one directory at a time without following a
 * symlink. Ownership, modes, times, devices and capabilities are recorded in
 * `meta`, not applied; a device node or FIFO is an empty regular file in the
 * tree (the puller cannot mknod), made one inside the image.
 *
 * A layer is a stranger's input, so nothing in it sets how much memory or
 * disk the puller uses: the bytes stream through with backpressure from the
 * blob to the file being written (zstd in its own process behind a pipe,
 * gzip in zlib, which waits for its reader), files are written sparse (a
 * block of zeros is a hole), and the image's totals of uncompressed bytes
 * and entries, and the free space left, are checked as they grow.
 */
import { createHash } from "node:crypto";
import {
  closeSync,
  constants,
  createReadStream,
  ftruncateSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  rmSync,
  statfsSync,
  symlinkSync,
  writeSync,
  type PathLike,
  type Stats,
} from "node:fs";
import { open, readdir } from "node:fs/promises";
import { Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";
import { BangerError, HostCommandError, InvalidArgumentError, ResourceExhaustedError } from "@banger/common/errors";
import { streamProcess, type StreamedRun } from "@banger/common/host-runner";
import tar, { type Header } from "tar-stream";
import {
  imageTooLarge,
  namesTooLong,
  NAME_BYTES_PER_ENTRY,
  spaceLow,
  tooManyEntries,
  type BuildLimits,
  type BuildUsage,
} from "./limits.js";
import { forgetTree, shownName, type EntryMeta, type MetadataMap } from "./metadata.js";

export interface ApplyOptions {
  readonly signal: AbortSignal;
  readonly limits: BuildLimits;
  /** What the image's earlier layers used; this layer adds to it. */
  readonly usage: BuildUsage;
}

/**
 * Synchronous file system calls on purpose: a layer is thousands of small
 * entries applied strictly in order, and a thread-pool round trip per call
 * (lstat, open, write, close) costs more than the calls themselves.
 */
function lstatOrNone(path: PathLike): Stats | undefined {
  try {
    return lstatSync(path);
  } catch {
    return undefined;
  }
}

/** The free space of the tree's file system is looked at again after this many bytes written… */
const SPACE_CHECK_BYTES = 64 * 1024 * 1024;
/** …or this many entries made. */
const SPACE_CHECK_ENTRIES = 4096;
/** A path longer than Linux's PATH_MAX, or a name longer than ext4's, cannot be in an image. */
const MAX_PATH_BYTES = 4095;
const MAX_NAME_BYTES = 255;
/** security.capability is 12, 20 or 24 bytes (v1, v2, v3). */
const MAX_CAPABILITY_BYTES = 64;

function hostile(entry: string, why: string): InvalidArgumentError {
  return new InvalidArgumentError(`hostile layer entry ${shownName(entry)}: ${why}`, { reason: "HOSTILE_LAYER" });
}

/**
 * "./a/b/" or "/a/b" → "a/b", for a name read one byte a character. Refuses
 * only what no Linux file system can hold: `..`, NUL, a component longer
 * than 255 bytes (ext4's limit) or a path longer than PATH_MAX. Any other
 * byte (newlines, quotes, backslashes, non-UTF-8) is a name like any other.
 */
export function treePath(name: string): string {
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.length === 0) return "";
  for (const part of parts) {
    if (part === "..") throw hostile(name, "a `..` component would leave the tree");
    if (part.includes("\0")) throw hostile(name, "a NUL byte in a name");
    if (part.length > MAX_NAME_BYTES) {
      throw hostile(name, `a name of ${part.length} bytes, longer than the ${MAX_NAME_BYTES} ext4 can hold`);
    }
  }
  const path = parts.join("/");
  if (path.length > MAX_PATH_BYTES) throw hostile(name, `a path longer than ${MAX_PATH_BYTES} bytes`);
  return path;
}

/** A tree path (one byte a character) as the file system takes it. */
const bytesOf = (path: string) => Buffer.from(path, "latin1");

/** Major and minor numbers ext4 can hold (Linux's dev_t: 12 and 20 bits). */
const MAX_DEV_MAJOR = 0xfff;
const MAX_DEV_MINOR = 0xfffff;

/**
 * A tar-stream extractor that keeps every byte of names, link targets and pax
 * records. tar-stream reads the header's names in `filenameEncoding`, but pax
 * records (`path`, `linkpath`, `SCHILY.xattr.*`) always as UTF-8, which turns
 * bytes that are not UTF-8 into U+FFFD: a non-UTF-8 name, or a
 * security.capability with a byte of 0x80 or more (cap_setuid), would change.
 * Its pax decoding is internal; this replaces it on this one extractor, and
 * extract.test.ts fails if tar-stream stops calling it.
 */
function byteExactExtract(): ReturnType<typeof tar.extract> {
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
function mtimeOf(header: Header): number | undefined {
  const pax = Number((header.pax as Record<string, string> | undefined)?.["mtime"]);
  if (Number.isFinite(pax)) return Math.floor(pax);
  const ms = header.mtime?.getTime();
  return ms === undefined || Number.isNaN(ms) ? undefined : Math.floor(ms / 1000);
}

/** The layer's bytes, decompressed by magic number (gzip, zstd, or a plain tar), read only as fast as they are used. */
async function decompressed(blobPath: string, signal: AbortSignal): Promise<{ stream: Readable; zstd?: StreamedRun }> {
  const handle = await open(blobPath, "r");
  const magic = Buffer.alloc(4);
  await handle.read(magic, 0, 4, 0);
  await handle.close();
  if (magic.equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) {
    // The zstd tool, not a JavaScript decoder: a pipe stops it while the tree is behind (a decoder
    // called from JavaScript turns one input chunk into gigabytes at once), and it is five times
    // faster. Its window is capped at zstd's default, 128 MiB, the most a frame may ask for.
    const zstd = streamProcess(["zstd", "-d", "-c", "-q", "--memory=128MB", "--", blobPath], { signal });
    return { stream: zstd.stdout, zstd };
  }
  const raw = createReadStream(blobPath);
  if (magic[0] === 0x1f && magic[1] === 0x8b) return { stream: raw.pipe(createGunzip()) };
  return { stream: raw };
}

const BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(BLOCK);
const isZero = (buf: Buffer, at: number, length: number) => buf.compare(ZERO_BLOCK, 0, length, at, at + length) === 0;

/**
 * Writes a file front to back, leaving a hole for every file-aligned block of
 * zeros (a 2 GiB file of zeros takes no space), runs of other blocks in one
 * write each; `end()` sets the size.
 */
class SparseWriter {
  private readonly tail = Buffer.alloc(BLOCK);
  private tailBytes = 0;
  /** File offset of tail[0]: everything before it is written or a hole. */
  private offset = 0;

  constructor(
    private readonly fd: number,
    private readonly onWritten: (bytes: number) => void,
  ) {}

  write(chunk: Buffer): void {
    let at = 0;
    if (this.tailBytes > 0) {
      at = chunk.copy(this.tail, this.tailBytes, 0, Math.min(chunk.length, BLOCK - this.tailBytes));
      this.tailBytes += at;
      if (this.tailBytes < BLOCK) return;
      this.blocks(this.tail, 0, BLOCK);
      this.tailBytes = 0;
    }
    const whole = at + Math.floor((chunk.length - at) / BLOCK) * BLOCK;
    this.blocks(chunk, at, whole);
    this.tailBytes = chunk.copy(this.tail, 0, whole);
  }

  /** Closes the file's content: the last partial block, then its size. */
  end(): void {
    if (this.tailBytes > 0 && !isZero(this.tail, 0, this.tailBytes))
      this.put(this.tail, 0, this.tailBytes, this.offset);
    ftruncateSync(this.fd, this.offset + this.tailBytes);
  }

  /** buf[from, to), whole blocks, at `offset`. */
  private blocks(buf: Buffer, from: number, to: number): void {
    const base = this.offset - from;
    let run = from;
    for (let at = from; at < to; at += BLOCK) {
      if (!isZero(buf, at, BLOCK)) continue;
      if (at > run) this.put(buf, run, at, base + run);
      run = at + BLOCK;
    }
    if (to > run) this.put(buf, run, to, base + run);
    this.offset += to - from;
  }

  private put(buf: Buffer, from: number, to: number, position: number): void {
    for (let done = 0; done < to - from;)
      done += writeSync(this.fd, buf, from + done, to - from - done, position + done);
    this.onWritten(to - from);
  }
}

/** Errors of the layer's bytes themselves (not gzip, not a tar, cut short) become INVALID_ARGUMENT; a full disk, RESOURCE_EXHAUSTED. */
function layerError(error: unknown): unknown {
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

const malformed = (why: string, cause: unknown) =>
  new InvalidArgumentError(`the layer is not a valid tar (plain, gzip or zstd): ${why}`, {
    reason: "MALFORMED_LAYER",
    cause,
  });

/** Opens directory `dir` (a tree path) one component at a time, never through a symlink: its fd, or undefined. */
function openTreeDir(treeDir: string, dir: string): number | undefined {
  const flags = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
  let fd = openSync(treeDir, flags);
  for (const part of dir === "" ? [] : dir.split("/")) {
    let next: number;
    try {
      next = openSync(bytesOf(`/proc/self/fd/${fd}/${part}`), flags);
    } catch {
      closeSync(fd);
      return undefined; // missing, a symlink (ELOOP) or not a directory
    }
    closeSync(fd);
    fd = next;
  }
  return fd;
}

/** Applies the layer at `blobPath` to `treeDir`; returns the sha256 of the uncompressed tar (its diff_id). */
export async function applyLayer(
  treeDir: string,
  blobPath: string,
  meta: MetadataMap,
  options: ApplyOptions,
): Promise<{ diffId: string; entries: number }> {
  const { limits, usage } = options;
  const hash = createHash("sha256");
  const counting = new Transform({
    transform(chunk: Buffer, _enc, done) {
      usage.bytes += chunk.length;
      if (usage.bytes > limits.maxImageBytes) {
        done(imageTooLarge(limits));
        return;
      }
      hash.update(chunk);
      done(null, chunk);
    },
  });
  const extract = byteExactExtract();
  const createdHere = new Set<string>();
  let entries = 0;

  const treePrefix = Buffer.from(`${treeDir}/`);
  const abs = (path: string) => Buffer.concat([treePrefix, bytesOf(path)]);

  let writtenSinceCheck = 0;
  let entriesSinceCheck = 0;
  const checkSpace = () => {
    const stats = statfsSync(treeDir);
    const free = stats.bavail * stats.bsize;
    if (free < limits.minFreeBytes) throw spaceLow(treeDir, free, limits);
    writtenSinceCheck = 0;
    entriesSinceCheck = 0;
  };
  const written = (bytes: number) => {
    writtenSinceCheck += bytes;
    if (writtenSinceCheck >= SPACE_CHECK_BYTES) checkSpace();
  };
  checkSpace();

  /** Directories already proved real in this layer; anything `clear` touches leaves it. */
  const provenDirs = new Set<string>();

  /** Every parent of `path` is a real directory inside the tree (made if missing). */
  function parentsOf(path: string, entry: string): void {
    const parts = path.split("/").slice(0, -1);
    let current = "";
    for (const part of parts) {
      current = current ? `${current}/${part}` : part;
      if (provenDirs.has(current)) continue;
      const stats = lstatOrNone(abs(current));
      if (!stats) {
        mkdirSync(abs(current), { mode: 0o755 });
        meta.set(current, { type: "dir", mode: 0o755, uid: 0, gid: 0 });
        createdHere.add(current);
      } else if (stats.isSymbolicLink()) {
        throw hostile(entry, `its parent ${current} is a symlink`);
      } else if (!stats.isDirectory()) {
        throw hostile(entry, `its parent ${current} is not a directory`);
      }
      provenDirs.add(current);
    }
  }

  /** Removes whatever is at `path` (a file, link or whole directory), never following a link. */
  function clear(path: string): void {
    const stats = lstatOrNone(abs(path));
    if (!stats) return; // nothing there: the common case, kept cheap
    rmSync(abs(path), { recursive: stats.isDirectory(), force: true });
    forgetTree(meta, path);
    provenDirs.delete(path);
    for (const dir of provenDirs) if (dir.startsWith(`${path}/`)) provenDirs.delete(dir);
  }

  /**
   * A hardlink to `target`, an existing regular file of the tree, reached from
   * the tree's root one directory at a time (O_NOFOLLOW, each opened through
   * the one before): a symlinked component (`a -> /home/me/.ssh`, then a link
   * to `a/id_ed25519`) is refused, never followed out of the tree.
   */
  function hardlink(path: string, target: string, entry: string, linkname: string): void {
    const slash = target.lastIndexOf("/");
    const dirFd =
      target === "" || target === path ? undefined : openTreeDir(treeDir, target.slice(0, Math.max(slash, 0)));
    try {
      const source = bytesOf(`/proc/self/fd/${dirFd}/${target.slice(slash + 1)}`);
      if (dirFd === undefined || !lstatOrNone(source)?.isFile()) {
        throw hostile(
          entry,
          `hardlink to ${linkname}, which is not a file in the image (reached without following a symlink)`,
        );
      }
      clear(path);
      linkSync(source, abs(path)); // link(2) does not follow a symlink in its last component either
    } finally {
      if (dirFd !== undefined) closeSync(dirFd);
    }
  }

  async function onEntry(header: Header, stream: Readable): Promise<void> {
    entries++;
    usage.entries++;
    if (usage.entries > limits.maxImageEntries) throw tooManyEntries(limits);
    if (++entriesSinceCheck >= SPACE_CHECK_ENTRIES) checkSpace();
    const path = treePath(header.name);
    usage.nameBytes = (usage.nameBytes ?? 0) + path.length;
    if (usage.nameBytes > limits.maxImageEntries * NAME_BYTES_PER_ENTRY) throw namesTooLong(limits);
    const base = path.split("/").at(-1) ?? "";
    const recorded = (type: EntryMeta["type"], extra: Partial<EntryMeta> = {}): EntryMeta => {
      const cap = (header.pax as Record<string, string> | undefined)?.["SCHILY.xattr.security.capability"];
      if (cap !== undefined && cap.length > MAX_CAPABILITY_BYTES) {
        throw hostile(header.name, `a security.capability of ${cap.length} bytes (at most ${MAX_CAPABILITY_BYTES})`);
      }
      const mtime = mtimeOf(header);
      return {
        type,
        mode: (header.mode ?? 0o644) & 0o7777,
        uid: header.uid ?? 0,
        gid: header.gid ?? 0,
        ...(mtime !== undefined ? { mtime } : {}),
        ...(cap ? { capability: Buffer.from(cap, "latin1") } : {}),
        ...extra,
      };
    };

    if (path === "") {
      stream.resume();
      return; // the root itself: keep its metadata as 0:0 0755
    }
    parentsOf(path, header.name);

    if (base === ".wh..wh..opq") {
      // Opaque directory: what lower layers put in it disappears.
      const dir = path.split("/").slice(0, -1).join("/");
      for (const name of await readdir(abs(dir || "."), { encoding: "buffer" })) {
        const child = name.toString("latin1");
        const childPath = dir ? `${dir}/${child}` : child;
        if (!createdHere.has(childPath)) clear(childPath);
      }
      stream.resume();
      return;
    }
    if (base.startsWith(".wh.")) {
      const target = base.slice(4);
      if (target === "" || target === "." || target === "..") throw hostile(header.name, "whiteout of `.` or `..`");
      clear(path.split("/").slice(0, -1).concat(target).join("/"));
      stream.resume();
      return;
    }

    createdHere.add(path);
    switch (header.type) {
      case "directory": {
        const stats = lstatOrNone(abs(path));
        if (stats && !stats.isDirectory()) clear(path);
        if (!stats?.isDirectory()) mkdirSync(abs(path), { mode: 0o755 });
        meta.set(path, recorded("dir"));
        stream.resume();
        return;
      }
      case "file":
      case "contiguous-file": {
        const size = header.size ?? 0;
        if (size > limits.maxFileBytes) {
          throw hostile(header.name, `claims ${size} bytes, more than the ${limits.maxFileBytes} allowed`);
        }
        if (usage.bytes + size > limits.maxImageBytes) throw imageTooLarge(limits); // before writing any of it
        clear(path);
        const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
        const fd = openSync(abs(path), flags, 0o644);
        try {
          const file = new SparseWriter(fd, written);
          // tar-stream's entry streams are streamx streams: iterate them rather than pipe them.
          // One chunk at a time: tar-stream holds the rest of the layer until it is asked for more.
          let got = 0;
          for await (const chunk of stream as AsyncIterable<Buffer>) {
            got += chunk.length;
            if (got > size) throw hostile(header.name, "holds more bytes than its header claims");
            file.write(chunk);
          }
          file.end();
        } finally {
          closeSync(fd);
        }
        meta.set(path, recorded("file"));
        return;
      }
      case "symlink": {
        clear(path);
        symlinkSync(bytesOf(header.linkname ?? ""), abs(path)); // created, never followed
        meta.set(path, recorded("symlink", { mode: 0o777 }));
        stream.resume();
        return;
      }
      case "link": {
        const target = treePath(header.linkname ?? "");
        hardlink(path, target, header.name, header.linkname ?? "");
        const targetMeta = meta.get(target);
        if (targetMeta) meta.set(path, targetMeta);
        stream.resume();
        return;
      }
      case "character-device":
      case "block-device":
      case "fifo": {
        // An empty file holds the name: the node itself is made inside the ext4 image by debugfs.
        const devMajor = header.devmajor ?? 0;
        const devMinor = header.devminor ?? 0;
        if (devMajor > MAX_DEV_MAJOR || devMinor > MAX_DEV_MINOR) {
          throw hostile(header.name, `device ${devMajor}:${devMinor}, beyond the 12:20 bits ext4 holds`);
        }
        clear(path);
        closeSync(
          openSync(abs(path), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644),
        );
        const type = header.type === "fifo" ? "fifo" : header.type === "block-device" ? "block" : "char";
        meta.set(path, recorded(type, { devMajor, devMinor }));
        stream.resume();
        return;
      }
      default:
        stream.resume(); // pax headers and the like carry no file
    }
  }

  extract.on("entry", (header, stream, next) => {
    // An entry stream fails with the extract when it is destroyed; that error reaches the caller through the pipeline.
    stream.on("error", () => undefined);
    onEntry(header, stream as unknown as Readable).then(
      () => next(),
      (error: unknown) => {
        stream.resume();
        extract.destroy(error as Error);
      },
    );
  });

  const { stream: source, zstd } = await decompressed(blobPath, options.signal);
  try {
    await pipeline(source, counting, extract, { signal: options.signal });
    await zstd?.exited;
  } catch (error) {
    zstd?.stop();
    // When zstd itself failed (not stopped by us just now), its own words say why.
    const tool = await zstd?.exited.then(
      () => undefined,
      (e: unknown) => e as HostCommandError,
    );
    if (!(error instanceof BangerError) && tool?.exitCode !== null && tool !== undefined) {
      throw malformed(tool.stderrTail, tool);
    }
    if (error instanceof HostCommandError) throw malformed(error.stderrTail, error);
    throw layerError(error);
  }
  return { diffId: `sha256:${hash.digest("hex")}`, entries };
}
