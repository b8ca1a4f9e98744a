#!/usr/bin/env node
// Real Debian images for the end-to-end suite, built with mmdebstrap from
// Debian's archive, as one-layer OCI image layouts, cached between runs, and
// optionally pushed to a registry with skopeo.
//
//   node test/e2e/support/debian-images.mjs --image minbase|systemd-ssh [--cache DIR] [--push HOST:PORT/REPO:TAG]
//
// The images:
//   minbase      bookworm --variant=minbase, nothing added: the shape of
//                docker.io/library/debian:bookworm (no init, no SSH server).
//   systemd-ssh  minbase + systemd-sysv + openssh-server: a systemd guest.
//
// Cache: DIR (default $BANGER_E2E_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/banger-e2e)
// holds debian-images/<image>-<key>/layout, where <key> is a hash of everything
// that decides what is built (suite, variant, packages, architecture, mirror,
// the options below and this recipe's version), never of the date: a cached
// image is reused until the recipe changes or the directory is removed (do so
// to pick up Debian's newer packages). A fresh CI machine builds each once per
// run. A build goes to a temporary directory beside the cache and is renamed
// into place when complete, so an interrupted one is never reused.
//
// Prints one JSON line: {image, layout, tag, cached, buildSeconds, tarBytes,
// layerBytes, manifest}.
//
// Needs: root (mmdebstrap's root mode: nothing else to install, unlike the
// unshare mode's uidmap and subordinate ids), mmdebstrap, Debian's archive
// over the network, gzip; skopeo for --push.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  createReadStream,
  createWriteStream,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { parseArgs } from "node:util";
import { createGzip } from "node:zlib";

/** Bump when the recipe changes in a way the inputs below do not show. */
const RECIPE_VERSION = 1;
const MIRROR = "http://deb.debian.org/debian";
const SUITE = "bookworm";

export const IMAGES = {
  minbase: { variant: "minbase", include: [] },
  "systemd-ssh": { variant: "minbase", include: ["openssh-server", "systemd-sysv"] },
};

const { values: args } = parseArgs({
  options: {
    image: { type: "string" },
    cache: { type: "string" },
    tag: { type: "string", default: "latest" },
    push: { type: "string" },
  },
});
const recipe = IMAGES[args.image ?? ""];
if (!recipe) {
  process.stderr.write(
    `usage: debian-images.mjs --image ${Object.keys(IMAGES).join("|")} [--cache DIR] [--tag TAG] [--push HOST:PORT/REPO:TAG]\n`,
  );
  process.exit(2);
}
if (process.getuid?.() !== 0) {
  process.stderr.write("debian-images.mjs: run as root (mmdebstrap's root mode)\n");
  process.exit(2);
}

const inputs = {
  recipe: RECIPE_VERSION,
  suite: SUITE,
  mirror: MIRROR,
  architecture: "amd64",
  variant: recipe.variant,
  include: [...recipe.include].sort(),
  // As docker.io/library/debian is made: merged /usr set up the debootstrap way (usr-is-merged), not by
  // the usrmerge package, which would bring perl (minbase: 170 MB of tar instead of ~120); no /dev nodes.
  options: ["--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr", "--skip=output/dev"],
};
const key = createHash("sha256").update(JSON.stringify(inputs)).digest("hex").slice(0, 16);
const cacheRoot = join(
  args.cache ??
    process.env.BANGER_E2E_CACHE ??
    join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "banger-e2e"),
  "debian-images",
);
const dir = join(cacheRoot, `${args.image}-${key}`);
const layout = join(dir, "layout");

const t0 = Date.now();
let cached = existsSync(join(dir, "build.json"));
if (!cached) {
  mkdirSync(cacheRoot, { recursive: true });
  const building = join(cacheRoot, `.building-${args.image}-${key}-${process.pid}`);
  rmSync(building, { recursive: true, force: true });
  mkdirSync(building);
  try {
    await build(building);
    rmSync(dir, { recursive: true, force: true });
    renameSync(building, dir);
  } catch (error) {
    rmSync(building, { recursive: true, force: true });
    throw error;
  }
}
const built = JSON.parse(readFileSync(join(dir, "build.json"), "utf8"));

if (args.push) {
  execFileSync(
    "skopeo",
    ["copy", "--quiet", "--dest-tls-verify=false", `oci:${layout}:latest`, `docker://${args.push}`],
    { stdio: ["ignore", 2, 2] },
  );
}
process.stdout.write(
  `${JSON.stringify({ image: args.image, layout, tag: "latest", cached, buildSeconds: cached ? built.buildSeconds : (Date.now() - t0) / 1000, tarBytes: built.tarBytes, layerBytes: built.layerBytes, manifest: built.manifest })}\n`,
);

/** mmdebstrap into a tar, then the tar gzip'd as the one layer of an OCI layout in `into/layout`. */
function build(into) {
  const tar = join(into, "rootfs.tar");
  execFileSync(
    "mmdebstrap",
    [
      "--quiet",
      "--mode=root",
      `--variant=${inputs.variant}`,
      `--architectures=${inputs.architecture}`,
      ...(inputs.include.length > 0 ? [`--include=${inputs.include.join(",")}`] : []),
      ...inputs.options,
      "--format=tar",
      inputs.suite,
      tar,
      inputs.mirror,
    ],
    // Its hooks print on stdout: to stderr, so that this script's stdout is its JSON line alone.
    { stdio: ["ignore", 2, 2] },
  );
  return layoutFromTar(tar, join(into, "layout"), into);
}

function layoutFromTar(tar, out, into) {
  // The layer in one pass: the tar's digest (diff_id) and the gzip's (the blob).
  const blobs = join(out, "blobs", "sha256");
  mkdirSync(blobs, { recursive: true });
  const gz = join(out, "layer.tmp");
  const diff = createHash("sha256");
  const blob = createHash("sha256");
  const tap = (hash) =>
    new Transform({
      transform(chunk, _encoding, done) {
        hash.update(chunk);
        done(null, chunk);
      },
    });
  return pipeline(createReadStream(tar), tap(diff), createGzip({ level: 6 }), tap(blob), createWriteStream(gz)).then(
    () => {
      const layerDigest = `sha256:${blob.digest("hex")}`;
      renameSync(gz, join(blobs, layerDigest.slice(7)));
      const layerBytes = statSync(join(blobs, layerDigest.slice(7))).size;
      const sha256 = (bytes) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
      const putBlob = (bytes) => {
        writeFileSync(join(blobs, sha256(bytes).slice(7)), bytes);
        return { digest: sha256(bytes), size: bytes.length };
      };
      const config = Buffer.from(
        JSON.stringify({
          architecture: inputs.architecture,
          os: "linux",
          config: {
            Cmd: ["bash"],
            Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
          },
          rootfs: { type: "layers", diff_ids: [`sha256:${diff.digest("hex")}`] },
        }),
      );
      const manifest = putBlob(
        Buffer.from(
          JSON.stringify({
            schemaVersion: 2,
            mediaType: "application/vnd.oci.image.manifest.v1+json",
            config: { mediaType: "application/vnd.oci.image.config.v1+json", ...putBlob(config) },
            layers: [
              { mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: layerDigest, size: layerBytes },
            ],
          }),
        ),
      );
      writeFileSync(join(out, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
      writeFileSync(
        join(out, "index.json"),
        JSON.stringify({
          schemaVersion: 2,
          manifests: [
            {
              mediaType: "application/vnd.oci.image.manifest.v1+json",
              ...manifest,
              annotations: { "org.opencontainers.image.ref.name": "latest" },
            },
          ],
        }),
      );
      const tarBytes = statSync(tar).size;
      rmSync(tar);
      writeFileSync(
        join(into, "build.json"),
        JSON.stringify({
          inputs,
          buildSeconds: (Date.now() - t0) / 1000,
          tarBytes,
          layerBytes,
          manifest: manifest.digest,
        }),
      );
    },
  );
}
