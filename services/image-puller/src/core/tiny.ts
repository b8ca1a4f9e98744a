/**
 * banger's built-in image `tiny`, built with no download: the host's static
 * busybox with a link for each of its applets, and the directories and /etc
 * files a guest needs. banger's guest kit (SSH, the agent, an init for images
 * without one) is in banger's initramfs, so the image needs nothing else.
 *
 * The tree is written as one plain tar layer (owners 0:0, mtime 0, so the same
 * busybox gives the same layer digest) and goes through the builder a pull
 * uses: the same extractor, limits and ext4 path, no second way to make an
 * image. Everything is written inside the staging directory; on failure
 * nothing is left there.
 */
import { createWriteStream } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import tar from "tar-stream";
import type { Busybox, ImageBuilder } from "./ports.js";
import type { PullResult } from "./pull.js";
import {
  builderStages,
  emptyStaging,
  prepareStaging,
  ROOTFS_FILE,
  stageTimer,
  WORK_SEED_FILE,
  type StageEvent,
} from "./staging.js";

export interface TinyRequest {
  readonly stagingDir: string;
  readonly minRootfsMib: number;
}

export interface TinyDeps {
  readonly createBuilder: () => ImageBuilder;
  /** The orchestrator's state directory: staging directories must be inside it. */
  readonly stateDir: string;
  /** The static busybox to put in, and its applets. */
  readonly busybox: Busybox;
}

export type TinyEvent = StageEvent;

/** The name the orchestrator publishes it under. */
export const TINY_IMAGE = "tiny";

const LAYER_FILE = ".tiny-layer.tar";

type TarEntry =
  | { readonly type: "directory"; readonly name: string; readonly mode: number }
  | { readonly type: "file"; readonly name: string; readonly mode: number; readonly data: Buffer }
  | { readonly type: "symlink"; readonly name: string; readonly target: string };

const DIRECTORIES: readonly [string, number][] = [
  ["bin", 0o755],
  ["dev", 0o755],
  ["etc", 0o755],
  ["home", 0o755],
  ["mnt", 0o755],
  ["proc", 0o555],
  ["root", 0o700],
  ["run", 0o755],
  ["sbin", 0o755],
  ["sys", 0o555],
  ["tmp", 0o1777],
  ["usr", 0o755],
  ["usr/bin", 0o755],
  ["usr/sbin", 0o755],
  ["var", 0o755],
  ["var/log", 0o755],
  ["var/tmp", 0o1777],
];

const ETC: readonly [string, number, string][] = [
  ["etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"],
  ["etc/shadow", 0o600, "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n"],
  ["etc/group", 0o644, "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"],
  ["etc/shells", 0o644, "/bin/sh\n/bin/ash\n"],
  ["etc/profile", 0o644, "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"],
  [
    "etc/os-release",
    0o644,
    'NAME="banger tiny"\nID=banger-tiny\nPRETTY_NAME="banger tiny (busybox and banger\'s guest kit)"\n',
  ],
];

/** An applet path busybox prints, as a relative path inside the tree ("bin/ls"); undefined for odd ones. */
function appletPath(line: string): string | undefined {
  const path = line.trim().replace(/^\/+/, "");
  if (!/^(usr\/)?s?bin\/[A-Za-z0-9._[-]+$/.test(path)) return undefined;
  // No init: banger's minimal init runs an image without one (and stops it gracefully).
  if (path === "bin/busybox" || path === "sbin/init" || path === "linuxrc") return undefined;
  return path;
}

/** The tree of `tiny`: directories, busybox and its applets' links, /etc. */
export function tinyEntries(busybox: Buffer, applets: readonly string[]): TarEntry[] {
  const entries: TarEntry[] = DIRECTORIES.map(([name, mode]) => ({ type: "directory", name, mode }));
  entries.push({ type: "file", name: "bin/busybox", mode: 0o755, data: busybox });
  entries.push({ type: "symlink", name: "var/run", target: "../run" });
  const seen = new Set(entries.map((e) => e.name));
  for (const line of applets) {
    const path = appletPath(line);
    if (path === undefined || seen.has(path)) continue;
    seen.add(path);
    const depth = path.split("/").length - 1;
    entries.push({ type: "symlink", name: path, target: `${"../".repeat(depth)}bin/busybox` });
  }
  for (const [name, mode, text] of ETC) entries.push({ type: "file", name, mode, data: Buffer.from(text) });
  return entries;
}

/** Writes `entries` as a plain tar, owned 0:0, mtime 0. */
async function writeTar(entries: readonly TarEntry[], file: string, signal: AbortSignal): Promise<void> {
  const pack = tar.pack();
  const written = pipeline(pack, createWriteStream(file, { mode: 0o600 }), { signal });
  const base = { uid: 0, gid: 0, uname: "root", gname: "root", mtime: new Date(0) };
  for (const entry of entries) {
    await new Promise<void>((resolve, reject) => {
      const done = (error?: Error | null) => (error ? reject(error) : resolve());
      if (entry.type === "symlink") {
        pack.entry({ ...base, name: entry.name, type: "symlink", linkname: entry.target, mode: 0o777 }, done);
      } else if (entry.type === "directory") {
        pack.entry({ ...base, name: entry.name, type: "directory", mode: entry.mode }, done);
      } else {
        pack.entry({ ...base, name: entry.name, type: "file", mode: entry.mode }, entry.data, done);
      }
    });
  }
  pack.finalize();
  await written;
}

/** Builds `tiny` into the staging directory: the tree, then the root filesystem and work seed as a pull does. */
export async function buildTiny(
  deps: TinyDeps,
  req: TinyRequest,
  signal: AbortSignal,
  emit: (event: TinyEvent) => void,
): Promise<PullResult> {
  await prepareStaging(deps.stateDir, req.stagingDir);
  const builder = deps.createBuilder();
  const tree = join(req.stagingDir, ".tree");
  const layer = join(req.stagingDir, LAYER_FILE);
  const timed = stageTimer(emit);
  try {
    const busybox = await deps.busybox.read();
    const applets = await deps.busybox.applets(signal);
    const entries = tinyEntries(busybox, applets);
    const { diffId } = await timed(
      "layers",
      async () => {
        await writeTar(entries, layer, signal);
        await mkdir(tree, { mode: 0o755 });
        const applied = await builder.applyLayer(tree, layer, signal);
        await rm(layer, { force: true });
        return applied;
      },
      `${deps.busybox.path} with ${entries.filter((e) => e.type === "symlink").length - 1} applets`,
    );
    const rootfs = join(req.stagingDir, ROOTFS_FILE);
    const { bytes: rootfsBytes } = await builder.buildRootfs(
      tree,
      rootfs,
      { minMib: req.minRootfsMib || 256, headroomPercent: 20, inodeMarginPercent: 25, signal },
      builderStages(emit),
    );
    const workSeed = join(req.stagingDir, WORK_SEED_FILE);
    const { bytes: workSeedBytes } = await timed("work-seed", () => builder.buildWorkSeed(tree, workSeed, signal));
    await timed("verify", async () => {
      await builder.verify(rootfs, signal);
      await builder.verify(workSeed, signal);
    });
    await rm(tree, { recursive: true, force: true });
    return {
      manifestDigest: diffId,
      configDigest: "",
      platform: "linux/amd64",
      canonicalReference: "",
      rootfsFile: ROOTFS_FILE,
      rootfsBytes,
      workSeedFile: WORK_SEED_FILE,
      workSeedBytes,
      manifestFile: "",
      downloadedBytes: 0,
      entrypoint: [],
      cmd: ["/bin/sh"],
      env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
      user: "",
      workingDir: "",
    };
  } catch (error) {
    await emptyStaging(req.stagingDir);
    throw error;
  }
}
