/**
 * Builds ext4 images from a staging tree without root: `mkfs.ext4 -d` copies
 * the tree (root owned by 0:0), then one `debugfs -w -f -` script restores
 * every recorded owner, mode (setuid included), device node and
 * security.capability.
 */
import { lstat, mkdtemp, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { EntryMeta, MetadataMap } from "./metadata.js";
import { run } from "./run.js";

export interface RootfsOptions {
  readonly minMib: number;
  readonly headroomPercent: number;
  readonly inodeMarginPercent: number;
  readonly signal: AbortSignal;
}

const BLOCK = 4096;
const TYPE_BITS: Record<EntryMeta["type"], number> = {
  file: 0o100000,
  dir: 0o040000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
  fifo: 0o010000,
};

/** Bytes (in whole blocks) and inodes the tree needs. */
async function measure(dir: string): Promise<{ bytes: number; inodes: number }> {
  let bytes = 0;
  let inodes = 1;
  const seen = new Set<number>();
  const walk = async (path: string): Promise<void> => {
    for (const name of await readdir(path)) {
      const child = join(path, name);
      const stats = await lstat(child);
      if (seen.has(stats.ino)) continue; // a hardlink takes no second inode
      seen.add(stats.ino);
      inodes++;
      bytes += Math.ceil(stats.size / BLOCK) * BLOCK + (stats.isDirectory() ? BLOCK : 0);
      if (stats.isDirectory()) await walk(child);
    }
  };
  await walk(dir);
  return { bytes, inodes };
}

async function mkfs(treeDir: string, outFile: string, options: RootfsOptions, recordedEntries: number): Promise<void> {
  const used = await measure(treeDir);
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

/** One debugfs script for every recorded entry; paths relative to the image root. */
async function restoreMetadata(
  image: string,
  entries: readonly [string, EntryMeta][],
  signal: AbortSignal,
  rootMeta?: EntryMeta,
): Promise<void> {
  const scratch = await mkdtemp(join(tmpdir(), "banger-caps-"));
  try {
    const lines: string[] = [];
    if (rootMeta) lines.push(...inodeFields("<2>", rootMeta));
    let capabilities = 0;
    for (const [path, meta] of entries) {
      const quoted = `"/${path}"`;
      if (meta.type === "char" || meta.type === "block" || meta.type === "fifo") {
        // debugfs's mknod links its whole argument as one name in the current directory:
        // change into the parent and give it the last component only.
        const slash = path.lastIndexOf("/");
        const kind =
          meta.type === "fifo"
            ? "p"
            : `${meta.type === "char" ? "c" : "b"} ${meta.devMajor ?? 0} ${meta.devMinor ?? 0}`;
        lines.push(`cd "/${path.slice(0, Math.max(slash, 0))}"`, `mknod "${path.slice(slash + 1)}" ${kind}`, "cd /");
      }
      lines.push(...inodeFields(quoted, meta));
      if (meta.capability) {
        const file = join(scratch, `cap-${capabilities++}`);
        await writeFile(file, meta.capability);
        lines.push(`ea_set -f ${file} ${quoted} security.capability`);
      }
    }
    if (lines.length > 0) {
      await run(["debugfs", "-w", "-f", "-", image], { stdin: lines.join("\n") + "\n", signal });
      // debugfs leaves the group summaries (free inode/block counts) behind its mknods: let
      // e2fsck recount them (exit 1 = "corrected"), so the image then passes e2fsck -fn.
      await run(["e2fsck", "-fy", image], { signal, okCodes: [0, 1] });
    }
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

function inodeFields(target: string, meta: EntryMeta): string[] {
  const mode = (TYPE_BITS[meta.type] | meta.mode).toString(8);
  return [`sif ${target} uid ${meta.uid}`, `sif ${target} gid ${meta.gid}`, `sif ${target} mode 0${mode}`];
}

/** Parents before children, so nodes are made in directories that exist. */
function sorted(meta: MetadataMap, under = ""): [string, EntryMeta][] {
  const prefix = under ? `${under}/` : "";
  return [...meta.entries()]
    .filter(([path]) => path.startsWith(prefix) && path !== under)
    .map(([path, m]): [string, EntryMeta] => [path.slice(prefix.length), m])
    .sort(([a], [b]) => a.split("/").length - b.split("/").length || a.localeCompare(b));
}

export async function buildRootfs(
  treeDir: string,
  meta: MetadataMap,
  outFile: string,
  options: RootfsOptions,
  onStage: (stage: "mkfs" | "ownership", done: boolean) => void,
): Promise<{ bytes: number }> {
  onStage("mkfs", false);
  await mkfs(treeDir, outFile, options, meta.size);
  onStage("mkfs", true);
  onStage("ownership", false);
  await restoreMetadata(outFile, sorted(meta), options.signal);
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
    await restoreMetadata(outFile, isDir ? sorted(meta, "root") : [], signal, rootMeta);
  } finally {
    if (!isDir) await rm(source, { recursive: true, force: true });
  }
  return { bytes: (await stat(outFile)).size };
}

/** `e2fsck -fn`: a clean image or an error. */
export async function verifyExt4(file: string, signal: AbortSignal): Promise<void> {
  await run(["e2fsck", "-fn", file], { signal });
}
