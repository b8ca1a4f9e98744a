/**
 * Builds ext4 images from a staging tree without root: `mkfs.ext4 -d` copies
 * the tree (names byte for byte, hardlinks, root owned by 0:0), debugfs lists
 * the image's directories to learn each entry's inode number, then one
 * `debugfs -w -f -` script restores every recorded owner, mode (setuid
 * included), mtime, device node and security.capability by inode number. No
 * name is ever written into a debugfs command: its parser cannot hold a
 * newline, and quotes and backslashes would need escaping.
 */
import { lstatSync, readdirSync } from "node:fs";
import { lstat, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runProcess } from "@banger/common/host-runner";
import { shownName, type EntryMeta, type MetadataMap } from "../layers/metadata.js";
import { settleTree, treeMtime } from "../layers/tree-meta.js";

export interface RootfsOptions {
  readonly minMib: number;
  readonly headroomPercent: number;
  readonly inodeMarginPercent: number;
  readonly signal: AbortSignal;
}

const BLOCK = 4096;

/**
 * What an e2fsprogs run may print: one debugfs listing holds a whole level of
 * the tree, at most the build limits' million entries of a line each.
 */
const TOOL_OUTPUT_BYTES = 1024 ** 3;

/** Runs an e2fsprogs tool; its stdout as bytes, a failure quoting stdout too (e2fsck reports its findings there). */
async function run(
  argv: readonly string[],
  options: { readonly signal: AbortSignal; readonly stdin?: string; readonly okCodes?: readonly number[] },
): Promise<Buffer> {
  return (await runProcess(argv, { ...options, stdoutInError: true, maxOutputBytes: TOOL_OUTPUT_BYTES })).stdout;
}
const TYPE_BITS: Record<EntryMeta["type"], number> = {
  file: 0o100000,
  dir: 0o040000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
  fifo: 0o010000,
};

const SLASH_BYTES = Buffer.from("/");

/**
 * Bytes (in whole blocks) and inodes the tree needs. Synchronous calls: a
 * thread-pool round trip per lstat costs more than the lstat.
 */
function measure(dir: string): { bytes: number; inodes: number } {
  let bytes = 0;
  let inodes = 1;
  const seen = new Set<number>();
  const walk = (path: Buffer): void => {
    for (const name of readdirSync(path, { encoding: "buffer" })) {
      const child = Buffer.concat([path, SLASH_BYTES, name]); // names need not be UTF-8
      const stats = lstatSync(child);
      if (seen.has(stats.ino)) continue; // a hardlink takes no second inode
      seen.add(stats.ino);
      inodes++;
      bytes += Math.ceil(stats.size / BLOCK) * BLOCK + (stats.isDirectory() ? BLOCK : 0);
      if (stats.isDirectory()) walk(child);
    }
  };
  walk(Buffer.from(dir));
  return { bytes, inodes };
}

async function mkfs(treeDir: string, outFile: string, options: RootfsOptions, recordedEntries: number): Promise<void> {
  const used = measure(treeDir);
  const inodes = Math.ceil(Math.max(used.inodes, recordedEntries) * (1 + options.inodeMarginPercent / 100)) + 256;
  const bytes = used.bytes * (1 + options.headroomPercent / 100) + inodes * 256 + 32 * 1024 * 1024;
  const sizeMib = Math.max(options.minMib, Math.ceil(bytes / 1024 / 1024));
  await run(
    [
      "mkfs.ext4",
      "-q",
      "-F",
      "-t",
      "ext4",
      "-b",
      String(BLOCK),
      "-N",
      String(inodes),
      "-d",
      treeDir,
      "-E",
      "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
      outFile,
      `${sizeMib}M`,
    ],
    { signal: options.signal },
  );
}

/** An inode of the built image, as `debugfs ls -p` lists it in its directory. */
interface ListedInode {
  readonly ino: number;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** The entry's name, one byte a character. */
  readonly name: string;
}

const SLASH = 0x2f;
const NEWLINE = 0x0a;

/**
 * Reads what `debugfs -f -` printed for `ls -p <dir>` of each of `dirs`, in
 * order: the echoed command, then `/ino/mode/uid/gid/name/size/` and a newline
 * per entry (no size for a directory), then an empty line. A name holds any
 * byte but `/` and NUL (a newline too), so it ends at the next slash and
 * nothing in it can pass for a record or a command. Anything else is an error.
 */
export function parseListings(out: Buffer, dirs: readonly number[]): ListedInode[][] {
  let at = 0;
  const fail = (why: string) => new Error(`debugfs listed the image's directories unexpectedly at byte ${at} (${why})`);
  const expect = (text: string) => {
    const bytes = Buffer.from(text);
    if (!out.subarray(at, at + bytes.length).equals(bytes)) throw fail(`expected ${JSON.stringify(text)}`);
    at += bytes.length;
  };
  const field = (pattern: RegExp, what: string) => {
    const end = out.indexOf(SLASH, at);
    const text = end === -1 ? "" : out.toString("latin1", at, end);
    if (end === -1 || !pattern.test(text)) throw fail(`a malformed ${what}`);
    at = end + 1;
    return text;
  };
  const listings = dirs.map((dir) => {
    expect(`debugfs: ls -p <${dir}>\n`);
    const listed: ListedInode[] = [];
    while (out[at] === SLASH) {
      at++;
      const ino = Number(field(/^[1-9]\d{0,9}$/, "inode number"));
      const mode = parseInt(field(/^[0-7]{1,6}$/, "mode"), 8);
      // Printed as signed 32-bit numbers.
      const uid = Number(field(/^-?\d{1,10}$/, "uid")) >>> 0;
      const gid = Number(field(/^-?\d{1,10}$/, "gid")) >>> 0;
      const name = field(/^[^]+$/, "name");
      field(/^\d*$/, "size");
      if (out[at++] !== NEWLINE) throw fail("an entry not ended by a newline");
      listed.push({ ino, mode, uid, gid, name });
    }
    if (out[at++] !== NEWLINE) throw fail("a listing not ended by an empty line");
    return listed;
  });
  if (at !== out.length) throw fail("more than the listings asked for");
  return listings;
}

const S_IFMT = 0o170000;

/** A recorded entry and how the built image lists its inode (undefined: not listed, e.g. the root). */
interface FoundInode {
  readonly meta: EntryMeta;
  readonly listed?: ListedInode;
}

/**
 * The inode of every recorded entry in the built image, found by walking its
 * directories by inode number from the root, one debugfs run a level: each
 * recorded name must be listed in its recorded parent with the type the tree
 * gave it (a device or FIFO is still the empty file that held its name), so a
 * name never reaches debugfs's command parser and no parse of a name can
 * point at another inode. Hardlinks are one inode, restored once.
 */
async function inodesOf(
  image: string,
  entries: ReadonlyMap<string, EntryMeta>,
  signal: AbortSignal,
): Promise<Map<number, FoundInode>> {
  const byInode = new Map<number, FoundInode>();
  let found = 0;
  let level: [number, string][] = [[2, ""]];
  while (level.length > 0) {
    const dirs = level.map(([ino]) => ino);
    const script = dirs.map((ino) => `ls -p <${ino}>\n`).join("");
    // -c: read-only, without reading the bitmaps a listing does not need.
    const out = await run(["debugfs", "-c", "-f", "-", image], { stdin: script, signal });
    const listings = parseListings(out, dirs);
    const next: [number, string][] = [];
    level.forEach(([, dir], i) => {
      for (const listed of listings[i] ?? []) {
        const { ino, mode, name } = listed;
        if (name === "." || name === "..") continue;
        const path = dir === "" ? name : `${dir}/${name}`;
        const meta = entries.get(path);
        if (meta === undefined) continue; // lost+found
        if ((mode & S_IFMT) !== IMAGE_TYPE_BITS[meta.type]) {
          throw new Error(`the built image holds ${shownName(path)} as mode 0${mode.toString(8)}, not a ${meta.type}`);
        }
        found++;
        byInode.set(ino, { meta, listed });
        if (meta.type === "dir") next.push([ino, path]);
      }
    });
    level = next;
  }
  if (found !== entries.size) {
    throw new Error(`the built image lacks ${entries.size - found} of the tree's ${entries.size} entries`);
  }
  return byInode;
}

/**
 * One debugfs script for what the image does not hold yet, by inode number;
 * paths relative to the image root. mkfs copied each entry's mode and mtime
 * as the tree holds them (tree-meta.ts put there what it could) and the tree's
 * owner: a field the image lists otherwise is set, the mtime only where the
 * tree could not hold it. Devices and FIFOs, empty regular files until now,
 * get every field, their type and numbers; e2fsck then rewrites their
 * directory entries' type.
 */
async function restoreMetadata(
  image: string,
  entries: ReadonlyMap<string, EntryMeta>,
  signal: AbortSignal,
  rootMeta?: EntryMeta,
): Promise<void> {
  const byInode = await inodesOf(image, entries, signal);
  if (rootMeta) byInode.set(2, { meta: rootMeta });
  if (byInode.size === 0) return;
  const scratch = await mkdtemp(join(tmpdir(), "banger-caps-"));
  try {
    const lines: string[] = [];
    let capabilities = 0;
    let nodes = 0;
    for (const [ino, { meta, listed }] of byInode) {
      const target = `<${ino}>`;
      if (meta.type === "char" || meta.type === "block" || meta.type === "fifo") {
        nodes++;
        lines.push(...inodeFields(target, meta), ...deviceFields(target, meta));
      } else {
        lines.push(...inodeFields(target, meta, listed));
      }
      if (meta.capability) {
        const file = join(scratch, `cap-${capabilities++}`);
        await writeFile(file, meta.capability);
        lines.push(`ea_set -f ${file} ${target} security.capability`);
      }
    }
    if (lines.length > 0) await run(["debugfs", "-w", "-f", "-", image], { stdin: lines.join("\n") + "\n", signal });
    // A directory entry records its inode's type: e2fsck sets the type of the
    // entries of devices and FIFOs (exit 1 = "corrected"), so the image then passes e2fsck -fn.
    if (nodes > 0) await run(["e2fsck", "-fy", image], { signal, okCodes: [0, 1] });
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/** The type bits of the inode mkfs made for an entry: devices and FIFOs are regular files until restored. */
const IMAGE_TYPE_BITS: Record<EntryMeta["type"], number> = {
  ...TYPE_BITS,
  char: 0o100000,
  block: 0o100000,
  fifo: 0o100000,
};

/**
 * The sif lines setting `meta`'s owner, mode and mtime on `target`: every one,
 * or with `listed` (how mkfs made the inode from the tree) only those that
 * differ from it, and the mtime only where the tree could not carry it.
 */
function inodeFields(target: string, meta: EntryMeta, listed?: ListedInode): string[] {
  const mode = TYPE_BITS[meta.type] | meta.mode;
  const lines: string[] = [];
  if (listed?.uid !== meta.uid) lines.push(`sif ${target} uid ${meta.uid}`);
  if (listed?.gid !== meta.gid) lines.push(`sif ${target} gid ${meta.gid}`);
  if (listed?.mode !== mode) lines.push(`sif ${target} mode 0${mode.toString(8)}`);
  if (listed === undefined && treeMtime(meta) !== undefined) lines.push(`sif ${target} mtime @${meta.mtime}`);
  return lines;
}

/**
 * An empty regular file made a device or FIFO: no extent tree (flags 0), the
 * device number in i_block[0] (old encoding) or i_block[1] (new), as
 * debugfs's mknod writes them.
 */
function deviceFields(target: string, meta: EntryMeta): string[] {
  const major = meta.devMajor ?? 0;
  const minor = meta.devMinor ?? 0;
  const small = meta.type !== "fifo" && major < 256 && minor < 256;
  const large = meta.type !== "fifo" && !small;
  const block0 = small ? major * 256 + minor : 0;
  const block1 = large ? ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0 : 0;
  return [
    `sif ${target} flags 0`,
    `sif ${target} block[0] ${block0}`,
    `sif ${target} block[1] ${block1}`,
    `sif ${target} block[2] 0`,
  ];
}

/** The recorded entries under `under` (the image's root), their paths relative to it. */
function under(meta: MetadataMap, dir: string): Map<string, EntryMeta> {
  const prefix = `${dir}/`;
  const entries = new Map<string, EntryMeta>();
  for (const [path, m] of meta) if (path.startsWith(prefix)) entries.set(path.slice(prefix.length), m);
  return entries;
}

export async function buildRootfs(
  treeDir: string,
  meta: MetadataMap,
  outFile: string,
  options: RootfsOptions,
  onStage: (stage: "mkfs" | "ownership", done: boolean) => void,
): Promise<{ bytes: number }> {
  onStage("mkfs", false);
  settleTree(treeDir, meta);
  await mkfs(treeDir, outFile, options, meta.size);
  onStage("mkfs", true);
  onStage("ownership", false);
  await restoreMetadata(outFile, meta, options.signal);
  onStage("ownership", true);
  return { bytes: (await stat(outFile)).size };
}

/** An ext4 image of the tree's /root (an empty one, root-owned 0700, when the image has none). */
export async function buildWorkSeed(
  treeDir: string,
  meta: MetadataMap,
  outFile: string,
  signal: AbortSignal,
): Promise<{ bytes: number }> {
  const rootDir = join(treeDir, "root");
  const isDir = (await lstat(rootDir).catch(() => undefined))?.isDirectory() === true;
  const source = isDir ? rootDir : await mkdtemp(join(tmpdir(), "banger-empty-root-"));
  try {
    await mkfs(source, outFile, { minMib: 64, headroomPercent: 20, inodeMarginPercent: 25, signal }, 0);
    const rootMeta = meta.get("root") ?? { type: "dir" as const, mode: 0o700, uid: 0, gid: 0 };
    await restoreMetadata(outFile, isDir ? under(meta, "root") : new Map(), signal, rootMeta);
  } finally {
    if (!isDir) await rm(source, { recursive: true, force: true });
  }
  return { bytes: (await stat(outFile)).size };
}

/** `e2fsck -fn`: a clean image or an error. */
export async function verifyExt4(file: string, signal: AbortSignal): Promise<void> {
  await run(["e2fsck", "-fn", file], { signal });
}
