/**
 * Applies one OCI layer to a staging tree without ever following a link or
 * writing outside the tree. Every entry name is checked (no `..`, no NUL;
 * a leading `/` is stripped as tar does, so absolute names stay inside),
 * every parent component must be a real directory inside the tree, files are
 * created with O_EXCL | O_NOFOLLOW, hardlinks must point at a regular file
 * already in the tree. Ownership, modes, devices and capabilities are
 * recorded in `meta`, not applied.
 */
import { createHash } from "node:crypto";
import {
  closeSync,
  constants,
  createReadStream,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  rmSync,
  symlinkSync,
  writeSync,
  type Stats,
} from "node:fs";
import { open, readdir } from "node:fs/promises";
import { join } from "node:path";
import { Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";
import { InvalidArgumentError } from "@banger/common";
import { Decompress } from "fzstd";
import tar, { type Header } from "tar-stream";
import { forgetTree, type EntryMeta, type MetadataMap } from "./metadata.js";

export interface ApplyOptions {
  readonly signal: AbortSignal;
  /** Largest single file accepted, bytes (a "huge sparse file" claim beyond it is refused). */
  readonly maxFileBytes: number;
}

/**
 * Synchronous file system calls on purpose: a layer is thousands of small
 * entries applied strictly in order, and a thread-pool round trip per call
 * (lstat, open, write, close) costs more than the calls themselves.
 */
function lstatOrNone(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch {
    return undefined;
  }
}

/** Files are written from memory in pieces of up to this size. */
const WRITE_BATCH_BYTES = 8 * 1024 * 1024;

function hostile(entry: string, why: string): InvalidArgumentError {
  return new InvalidArgumentError(`hostile layer entry ${JSON.stringify(entry.slice(0, 200))}: ${why}`, {
    reason: "HOSTILE_LAYER",
  });
}

/** "./a/b/" or "/a/b" → "a/b"; refuses `..`, empty components, NUL, control characters and `"`. */
export function treePath(name: string): string {
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.length === 0) return "";
  for (const part of parts) {
    if (part === "..") throw hostile(name, "a `..` component would leave the tree");
    if (/[\u0000-\u001f\u007f"\\]/.test(part))
      throw hostile(name, "control characters, quotes or backslashes in a name");
  }
  return parts.join("/");
}

/** The layer's bytes, decompressed by magic number (gzip, zstd, or a plain tar). */
async function decompressed(blobPath: string): Promise<Readable> {
  const handle = await open(blobPath, "r");
  const magic = Buffer.alloc(4);
  await handle.read(magic, 0, 4, 0);
  await handle.close();
  const raw = createReadStream(blobPath);
  if (magic[0] === 0x1f && magic[1] === 0x8b) return raw.pipe(createGunzip());
  if (magic.equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) return raw.pipe(zstdStream());
  return raw;
}

function zstdStream(): Transform {
  let push: (chunk: Uint8Array) => void = () => {};
  const zstd = new Decompress((chunk) => push(chunk));
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      push = (out) => this.push(Buffer.from(out));
      try {
        zstd.push(chunk);
        done();
      } catch (error) {
        done(error as Error);
      }
    },
    flush(done) {
      try {
        zstd.push(new Uint8Array(0), true);
        done();
      } catch (error) {
        done(error as Error);
      }
    },
  });
}

/** Applies the layer at `blobPath` to `treeDir`; returns the sha256 of the uncompressed tar (its diff_id). */
export async function applyLayer(
  treeDir: string,
  blobPath: string,
  meta: MetadataMap,
  options: ApplyOptions,
): Promise<{ diffId: string; entries: number }> {
  const hash = createHash("sha256");
  const hashing = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      done(null, chunk);
    },
  });
  const extract = tar.extract();
  const createdHere = new Set<string>();
  let entries = 0;

  const abs = (path: string) => join(treeDir, path);

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

  async function onEntry(header: Header, stream: Readable): Promise<void> {
    entries++;
    const path = treePath(header.name);
    const base = path.split("/").at(-1) ?? "";
    const recorded = (type: EntryMeta["type"], extra: Partial<EntryMeta> = {}): EntryMeta => {
      const cap = (header.pax as Record<string, string> | undefined)?.["SCHILY.xattr.security.capability"];
      return {
        type,
        mode: (header.mode ?? 0o644) & 0o7777,
        uid: header.uid ?? 0,
        gid: header.gid ?? 0,
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
      for (const child of await readdir(abs(dir || "."))) {
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
        if ((header.size ?? 0) > options.maxFileBytes) {
          throw hostile(header.name, `claims ${header.size} bytes, more than the ${options.maxFileBytes} allowed`);
        }
        clear(path);
        const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
        const fd = openSync(abs(path), flags, 0o644);
        try {
          // tar-stream's entry streams are streamx streams: iterate them rather than pipe them.
          let written = 0;
          let pending: Buffer[] = [];
          let pendingBytes = 0;
          for await (const chunk of stream as AsyncIterable<Buffer>) {
            written += chunk.length;
            if (written > options.maxFileBytes) throw hostile(header.name, "holds more bytes than its header claims");
            pending.push(chunk);
            pendingBytes += chunk.length;
            if (pendingBytes >= WRITE_BATCH_BYTES) {
              writeSync(fd, Buffer.concat(pending));
              pending = [];
              pendingBytes = 0;
            }
          }
          if (pendingBytes > 0) writeSync(fd, Buffer.concat(pending));
        } finally {
          closeSync(fd);
        }
        meta.set(path, recorded("file"));
        return;
      }
      case "symlink": {
        clear(path);
        symlinkSync(header.linkname ?? "", abs(path)); // created, never followed
        meta.set(path, recorded("symlink", { mode: 0o777 }));
        stream.resume();
        return;
      }
      case "link": {
        const target = treePath(header.linkname ?? "");
        const stats = target ? lstatOrNone(abs(target)) : undefined;
        if (!stats?.isFile())
          throw hostile(header.name, `hardlink to ${header.linkname ?? ""}, which is not a file in the image`);
        clear(path);
        linkSync(abs(target), abs(path));
        const targetMeta = meta.get(target);
        if (targetMeta) meta.set(path, targetMeta);
        stream.resume();
        return;
      }
      case "character-device":
      case "block-device":
      case "fifo": {
        // Recorded only: the node is made inside the ext4 image by debugfs.
        clear(path);
        const type = header.type === "fifo" ? "fifo" : header.type === "block-device" ? "block" : "char";
        meta.set(path, recorded(type, { devMajor: header.devmajor ?? 0, devMinor: header.devminor ?? 0 }));
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

  const source = await decompressed(blobPath);
  await pipeline(source, hashing, extract, { signal: options.signal });
  return { diffId: `sha256:${hash.digest("hex")}`, entries };
}
