/**
 * Test fixtures: OCI image layouts built from scratch (tar layers made by
 * `tar`, gzip, sha256, JSON), pushed to a registry with `skopeo copy`.
 */
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { gzipSync } from "node:zlib";
import { hasTool } from "@banger/common/testing";

/** What the real-registry tests run: the registry, skopeo to push, tar for layers, openssl for TLS and tokens. */
export const REGISTRY_TOOLS = ["docker-registry", "skopeo", "tar", "openssl"];
/** Whether the real-registry tests can run here (a suite says what it lacks with requireTools). */
export const HAVE_REGISTRY_TOOLS = REGISTRY_TOOLS.every(hasTool);

export const sha256 = (bytes: Uint8Array): string => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

export interface FixtureBlob {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly bytes: Buffer;
}

export interface FixtureLayer extends FixtureBlob {
  /** sha256 of the uncompressed tar. */
  readonly diffId: string;
}

export interface FixtureImage {
  readonly architecture: string;
  readonly layers: readonly FixtureLayer[];
  readonly config: FixtureBlob;
  readonly manifest: FixtureBlob;
}

/** A gzipped tar layer holding `files` (path → content), reproducible byte for byte. */
export function makeLayer(files: Readonly<Record<string, string>>): FixtureLayer {
  const root = mkdtempSync("/tmp/banger-layer-");
  try {
    for (const [path, content] of Object.entries(files)) {
      mkdirSync(dirname(join(root, path)), { recursive: true });
      writeFileSync(join(root, path), content);
    }
    const tar = execFileSync("tar", [
      "-C",
      root,
      "--sort=name",
      "--mtime=@0",
      "--owner=0",
      "--group=0",
      "--numeric-owner",
      "-cf",
      "-",
      ".",
    ]);
    const bytes = gzipSync(tar);
    return {
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      digest: sha256(bytes),
      size: bytes.length,
      bytes,
      diffId: sha256(tar),
    };
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

function blob(mediaType: string, value: unknown): FixtureBlob {
  const bytes = Buffer.from(JSON.stringify(value));
  return { mediaType, digest: sha256(bytes), size: bytes.length, bytes };
}

const descriptor = (b: FixtureBlob): { mediaType: string; digest: string; size: number } => ({
  mediaType: b.mediaType,
  digest: b.digest,
  size: b.size,
});

/** An OCI image (manifest, config, layers) for linux/`architecture`. */
export function makeImage(architecture: string, layers: readonly FixtureLayer[]): FixtureImage {
  const config = blob("application/vnd.oci.image.config.v1+json", {
    architecture,
    os: "linux",
    rootfs: { type: "layers", diff_ids: layers.map((layer) => layer.diffId) },
    config: {
      Entrypoint: ["/bin/entry"],
      Cmd: ["--serve"],
      Env: ["PATH=/usr/bin:/bin", `ARCH=${architecture}`],
      User: "1000:1000",
      WorkingDir: "/srv",
    },
  });
  const manifest = blob("application/vnd.oci.image.manifest.v1+json", {
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: descriptor(config),
    layers: layers.map(descriptor),
  });
  return { architecture, layers, config, manifest };
}

/** An OCI index of `images`, one entry per architecture. */
export function makeIndex(images: readonly FixtureImage[]): FixtureBlob {
  return blob("application/vnd.oci.image.index.v1+json", {
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.index.v1+json",
    manifests: images.map((image) => ({
      ...descriptor(image.manifest),
      platform: { os: "linux", architecture: image.architecture },
    })),
  });
}

/**
 * Writes an OCI image layout at `dir` whose index.json names each of `refs`
 * (tag → image or index); blobs of every image go into blobs/sha256.
 */
export function writeOciLayout(
  dir: string,
  refs: Readonly<
    Record<string, FixtureImage | { readonly index: FixtureBlob; readonly images: readonly FixtureImage[] }>
  >,
): void {
  const blobs = join(dir, "blobs", "sha256");
  mkdirSync(blobs, { recursive: true });
  const put = (b: FixtureBlob): void => writeFileSync(join(blobs, b.digest.slice("sha256:".length)), b.bytes);
  const entries: unknown[] = [];
  for (const [tag, ref] of Object.entries(refs)) {
    const images = "index" in ref ? ref.images : [ref];
    for (const image of images) {
      image.layers.forEach(put);
      put(image.config);
      put(image.manifest);
    }
    const top = "index" in ref ? ref.index : ref.manifest;
    put(top);
    entries.push({ ...descriptor(top), annotations: { "org.opencontainers.image.ref.name": tag } });
  }
  writeFileSync(join(dir, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  writeFileSync(join(dir, "index.json"), JSON.stringify({ schemaVersion: 2, manifests: entries }));
}

export interface SkopeoCopyOptions {
  /** "v2s2" converts to Docker media types (manifest lists too, with `all`). */
  readonly format?: "v2s2" | "oci";
  /** Copy every image of an index. */
  readonly all?: boolean;
  /** "user:password" for the destination. */
  readonly destCreds?: string;
}

/**
 * `skopeo copy oci:<layout>:<tag> docker://<dest>` to a plain-HTTP registry.
 * Asynchronous on purpose: the token service skopeo talks to may live in
 * this very process.
 */
export async function skopeoCopy(
  layout: string,
  tag: string,
  dest: string,
  options: SkopeoCopyOptions = {},
): Promise<void> {
  const argv = [
    "copy",
    "--quiet",
    "--dest-tls-verify=false",
    ...(options.format === undefined ? [] : ["--format", options.format]),
    ...(options.all ? ["--all"] : []),
    ...(options.destCreds === undefined ? [] : ["--dest-creds", options.destCreds]),
    `oci:${layout}:${tag}`,
    `docker://${dest}`,
  ];
  const child = spawn("skopeo", argv, { stdio: ["ignore", "ignore", "pipe"], timeout: 60_000 });
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", resolve);
  });
  if (code !== 0) throw new Error(`skopeo ${argv.join(" ")} exited ${code}: ${stderr}`);
}
