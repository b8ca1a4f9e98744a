/**
 * One tar entry applied to the tree, by kind: whiteouts remove what lower
 * layers put there, directories, files (written sparse, O_EXCL | O_NOFOLLOW),
 * symlinks (created, never followed), hardlinks (to a file already in the
 * tree), and device nodes and FIFOs (an empty regular file; the node is made
 * inside the image). Ownership, modes, times, devices and capabilities are
 * recorded in the tree's metadata, not applied.
 */
import { closeSync, constants, mkdirSync, openSync, symlinkSync } from "node:fs";
import { readdir } from "node:fs/promises";
import type { Readable } from "node:stream";
import type { Header } from "tar-stream";
import { mtimeOf } from "./layer-stream.js";
import { SparseWriter } from "./sparse-writer.js";
import { settleFile } from "./tree-meta.js";
import type { LayerMeter } from "./meter.js";
import type { EntryMeta } from "./metadata.js";
import { bytesOf, clear, hardlink, hostile, lstatOrNone, parentsOf, treePath, type LayerTree } from "./tree.js";

/** security.capability is 12, 20 or 24 bytes (v1, v2, v3). */
const MAX_CAPABILITY_BYTES = 64;
/** Major and minor numbers ext4 can hold (Linux's dev_t: 12 and 20 bits). */
const MAX_DEV_MAJOR = 0xfff;
const MAX_DEV_MINOR = 0xfffff;

const CREATE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/** What applying an entry needs: the tree and the layer's meter. */
export interface LayerContext {
  readonly tree: LayerTree;
  readonly meter: LayerMeter;
}

/** The metadata recorded for the entry of `header`. */
function recorded(header: Header, type: EntryMeta["type"], extra: Partial<EntryMeta> = {}): EntryMeta {
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
}

/** Applies one entry; its content stream is read to its end (or left to the caller on a throw). */
export async function applyEntry(ctx: LayerContext, header: Header, stream: Readable): Promise<void> {
  const { tree, meter } = ctx;
  meter.countEntry();
  const path = treePath(header.name);
  meter.countName(path);
  if (path === "") {
    stream.resume();
    return; // the root itself: keep its metadata as 0:0 0755
  }
  parentsOf(tree, path, header.name);

  const base = path.split("/").at(-1) ?? "";
  if (base === ".wh..wh..opq") {
    await opaqueWhiteout(tree, path);
  } else if (base.startsWith(".wh.")) {
    whiteout(tree, path, base, header.name);
  } else {
    tree.createdHere.add(path);
    if (header.type === "file" || header.type === "contiguous-file") {
      await writeFile(ctx, path, header, stream);
      return;
    }
    makeEntry(tree, path, header);
  }
  stream.resume();
}

/** Opaque directory: what lower layers put in it disappears. */
async function opaqueWhiteout(tree: LayerTree, path: string): Promise<void> {
  const dir = path.split("/").slice(0, -1).join("/");
  for (const name of await readdir(tree.abs(dir || "."), { encoding: "buffer" })) {
    const child = name.toString("latin1");
    const childPath = dir ? `${dir}/${child}` : child;
    if (!tree.createdHere.has(childPath)) clear(tree, childPath);
  }
}

/** `.wh.<name>`: <name> of a lower layer disappears. */
function whiteout(tree: LayerTree, path: string, base: string, entry: string): void {
  const target = base.slice(4);
  if (target === "" || target === "." || target === "..") throw hostile(entry, "whiteout of `.` or `..`");
  clear(tree, path.split("/").slice(0, -1).concat(target).join("/"));
}

/** A regular file, its bytes streamed from the layer and written sparse. */
async function writeFile(ctx: LayerContext, path: string, header: Header, stream: Readable): Promise<void> {
  const { tree, meter } = ctx;
  const size = header.size ?? 0;
  meter.claimFile(size, header.name);
  const meta = recorded(header, "file");
  clear(tree, path);
  const fd = openSync(tree.abs(path), CREATE_FLAGS, 0o644);
  try {
    const file = new SparseWriter(fd, meter.written);
    // tar-stream's entry streams are streamx streams: iterate them rather than pipe them.
    // One chunk at a time: tar-stream holds the rest of the layer until it is asked for more.
    let got = 0;
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      got += chunk.length;
      if (got > size) throw hostile(header.name, "holds more bytes than its header claims");
      file.write(chunk);
    }
    file.end();
    settleFile(fd, meta);
  } finally {
    closeSync(fd);
  }
  tree.meta.set(path, meta);
}

/** An entry without content: a directory, symlink, hardlink or device; other kinds (pax headers …) carry no file. */
function makeEntry(tree: LayerTree, path: string, header: Header): void {
  switch (header.type) {
    case "directory": {
      const stats = lstatOrNone(tree.abs(path));
      if (stats && !stats.isDirectory()) clear(tree, path);
      if (!stats?.isDirectory()) mkdirSync(tree.abs(path), { mode: 0o755 });
      tree.meta.set(path, recorded(header, "dir"));
      return;
    }
    case "symlink": {
      clear(tree, path);
      symlinkSync(bytesOf(header.linkname ?? ""), tree.abs(path)); // created, never followed
      tree.meta.set(path, recorded(header, "symlink", { mode: 0o777 }));
      return;
    }
    case "link": {
      const target = treePath(header.linkname ?? "");
      hardlink(tree, path, target, header.name, header.linkname ?? "");
      const targetMeta = tree.meta.get(target);
      if (targetMeta) tree.meta.set(path, targetMeta);
      return;
    }
    case "character-device":
    case "block-device":
    case "fifo":
      makeDevice(tree, path, header);
      return;
    default:
      return; // pax headers and the like carry no file
  }
}

/** An empty file holds the name: the node itself is made inside the ext4 image by debugfs. */
function makeDevice(tree: LayerTree, path: string, header: Header): void {
  const devMajor = header.devmajor ?? 0;
  const devMinor = header.devminor ?? 0;
  if (devMajor > MAX_DEV_MAJOR || devMinor > MAX_DEV_MINOR) {
    throw hostile(header.name, `device ${devMajor}:${devMinor}, beyond the 12:20 bits ext4 holds`);
  }
  clear(tree, path);
  closeSync(openSync(tree.abs(path), CREATE_FLAGS, 0o644));
  const type = header.type === "fifo" ? "fifo" : header.type === "block-device" ? "block" : "char";
  tree.meta.set(path, recorded(header, type, { devMajor, devMinor }));
}
