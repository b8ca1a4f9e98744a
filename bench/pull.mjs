// Pull of a realistic ~200 MB Debian root filesystem (debootstrap --variant=minbase) from a
// registry on 127.0.0.1: banger's puller with an empty cache, with a warm cache, and
// skopeo copy + umoci raw unpack + mkfs.ext4 -d for the same image. Prints times and ratios.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { gzip } from "node:zlib";
import { createUnixTransport } from "@banger/common";
import { PullStage, PullerService } from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import { createClient } from "@connectrpc/connect";
import { ROOT, fmt, importTestSupport, printTable, startServices } from "./lib.mjs";

const { makeImage, skopeoCopy, writeOciLayout } = await importTestSupport(
  "services/image-puller/test-support/registry/oci-image.ts",
);
const { startRegistry } = await importTestSupport("services/image-puller/test-support/registry/registry-process.ts");

const WORK = join(ROOT, ".bench");
const sha256 = (bytes) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

/** The rootfs tarball, made once with debootstrap and kept in .bench/ between runs. */
function rootfsTar() {
  const tarPath = join(WORK, "debian-minbase.tar");
  if (existsSync(tarPath)) return readFileSync(tarPath);
  const rootfs = join(WORK, "rootfs");
  if (!existsSync(join(rootfs, "etc", "os-release"))) {
    console.log("building the fixture: debootstrap --variant=minbase bookworm (once, ~30 s)…");
    rmSync(rootfs, { recursive: true, force: true });
    execFileSync("debootstrap", ["--variant=minbase", "bookworm", rootfs, "http://deb.debian.org/debian"], {
      stdio: "ignore",
    });
  }
  const tar = execFileSync("tar", ["-C", rootfs, "--numeric-owner", "--sort=name", "-cf", "-", "."], {
    maxBuffer: 2 ** 31,
  });
  writeFileSync(tarPath, tar);
  return tar;
}

async function time(work) {
  const t0 = performance.now();
  await work();
  return (performance.now() - t0) / 1000;
}

export async function benchPull() {
  if (process.getuid?.() !== 0) {
    console.log("\n## image pull\n\nskipped: building the Debian fixture with debootstrap needs root");
    return;
  }
  mkdirSync(WORK, { recursive: true });
  const tar = rootfsTar();
  const bytes = await promisify(gzip)(tar);
  const layer = {
    mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
    digest: sha256(bytes),
    size: bytes.length,
    bytes,
    diffId: sha256(tar),
  };
  const run = join(WORK, `run-${process.pid}`);
  rmSync(run, { recursive: true, force: true });
  mkdirSync(run, { recursive: true });
  const registry = await startRegistry(join(run, "registry"));
  const services = await startServices();
  try {
    writeOciLayout(join(run, "layout"), { v1: makeImage("amd64", [layer]) });
    await skopeoCopy(join(run, "layout"), "v1", `${registry.host}/bench/debian:v1`);
    const reference = `${registry.host}/bench/debian:v1`;

    const transport = createUnixTransport(services.socket("image-puller"), { peer: "image puller" });
    const puller = createClient(PullerService, transport.transport);
    const stages = {};
    const pullOnce = async (name, settings = {}) => {
      let result;
      const stagingDir = join(services.stateDir, "images", ".staging", name);
      for await (const message of puller.pull({ reference, stagingDir, ...settings })) {
        if (message.event.case === "result") result = message.event.value;
        if (message.event.case === "stage" && message.event.value.done) {
          (stages[name] ??= []).push(
            `${PullStage[message.event.value.stage].toLowerCase()}=${(Number(message.event.value.durationMs) / 1000).toFixed(2)}s`,
          );
        }
      }
      return result;
    };
    let cold;
    const coldSeconds = await time(async () => (cold = await pullOnce("cold")));
    const warmSeconds = await time(() => pullOnce("warm"));
    // Other build settings: the blobs are cached but the image is built again.
    const rebuildSeconds = await time(() => pullOnce("rebuild", { headroomPercent: 25 }));
    transport.close();

    const oci = join(run, "oci");
    const bundle = join(run, "bundle");
    const image = join(run, "skopeo.ext4");
    const skopeoSeconds = await time(async () => {
      execFileSync("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${reference}`, `oci:${oci}:v1`]);
      execFileSync("umoci", ["raw", "unpack", "--rootless", "--image", `${oci}:v1`, bundle], { stdio: "ignore" });
      const used = Number(execFileSync("du", ["-sb", bundle], { encoding: "utf8" }).split("\t")[0]);
      const mib = Math.ceil((used * 1.2) / 1048576) + 64;
      execFileSync("mkfs.ext4", ["-q", "-F", "-d", bundle, image, `${mib}M`]);
    });

    console.log(
      `\n## image pull (${(tar.length / 1048576).toFixed(0)} MiB Debian minbase, one gzip layer, registry on 127.0.0.1)\n`,
    );
    printTable(
      ["pipeline", "seconds", "vs skopeo+umoci+mkfs"],
      [
        ["banger pull, empty cache", fmt(coldSeconds), fmt(coldSeconds / skopeoSeconds)],
        ["banger pull, warm cache (built before: copied)", fmt(warmSeconds), fmt(warmSeconds / skopeoSeconds)],
        ["banger pull, blobs cached, other build settings", fmt(rebuildSeconds), fmt(rebuildSeconds / skopeoSeconds)],
        ["skopeo copy + umoci raw unpack + mkfs.ext4 -d", fmt(skopeoSeconds), "1.00"],
      ],
    );
    for (const [name, list] of Object.entries(stages)) console.log(`\nbanger ${name} stages: ${list.join(" ")}`);
    console.log(
      `\nbanger's image: ${(Number(cold?.rootfsBytes ?? 0n) / 1048576).toFixed(0)} MiB ext4 with owners, modes and devices restored (skopeo's pipeline restores none of them without root)`,
    );
  } finally {
    await services.stop();
    await registry.stop();
    rmSync(run, { recursive: true, force: true });
  }
}
