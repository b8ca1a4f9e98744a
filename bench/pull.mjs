// Pull of a real Debian bookworm minbase root filesystem (one gzip layer, made with mmdebstrap by the
// end-to-end suite's test/e2e/support/debian-images.mjs, which keeps it in its cache between runs:
// ~/.cache/banger-e2e) from a registry on 127.0.0.1: banger's puller with an empty cache, with a warm
// cache, and skopeo copy + umoci raw unpack + mkfs.ext4 -d for the same image, each cold pipeline
// several times, alternating, medians compared. Prints times, stages and ratios.
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { createUnixTransport } from "@banger/common";
import { LayerState, PullStage, PullerService } from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import { createClient } from "@connectrpc/connect";
import { ROOT, fmt, importTestSupport, printTable, report, startServices } from "./lib.mjs";

const { startRegistry } = await importTestSupport("services/image-puller/test-support/registry/registry-process.ts");

const WORK = join(ROOT, ".bench");
/** Cold pulls of each pipeline, alternating; the medians are compared. */
const ROUNDS = Number(process.env.BANGER_BENCH_PULL_ROUNDS ?? 3);

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

function time(work) {
  const t0 = performance.now();
  work();
  return (performance.now() - t0) / 1000;
}

/** Pushes the minbase image (built once with mmdebstrap, then from the e2e suite's cache) to `reference`. */
function pushMinbase(reference) {
  const out = execFileSync(
    process.execPath,
    [join(ROOT, "test/e2e/support/debian-images.mjs"), "--image", "minbase", "--push", reference],
    { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] },
  );
  return JSON.parse(out);
}

/** One pull through a fresh puller (empty blob cache), then the same again warm and with other settings. */
async function bangerPulls(reference, { warm }) {
  const services = await startServices();
  const transport = createUnixTransport(services.socket("image-puller"), { peer: "image puller" });
  try {
    const puller = createClient(PullerService, transport.transport);
    const pullOnce = async (name, settings = {}) => {
      const stages = [];
      let result;
      const t0 = performance.now();
      const stagingDir = join(services.stateDir, "images", ".staging", name);
      for await (const message of puller.pull({ reference, stagingDir, ...settings })) {
        if (message.event.case === "result") result = message.event.value;
        // When the layer was downloaded (verified in the cache) and when applied, from the pull's start.
        if (message.event.case === "layer") {
          const state = message.event.value.state;
          if (state === LayerState.DOWNLOADED || state === LayerState.APPLIED) {
            stages.push(`${LayerState[state].toLowerCase()}@${((performance.now() - t0) / 1000).toFixed(2)}s`);
          }
        }
        if (message.event.case === "stage" && message.event.value.done) {
          const { stage, durationMs } = message.event.value;
          stages.push(`${PullStage[stage].toLowerCase()}=${(Number(durationMs) / 1000).toFixed(2)}s`);
        }
      }
      return { seconds: (performance.now() - t0) / 1000, stages, result };
    };
    const cold = await pullOnce("cold");
    if (!warm) return { cold };
    // Built before with these settings: the images are copied.
    const warmPull = await pullOnce("warm");
    // Other build settings: the blobs are cached but the image is built again.
    const rebuild = await pullOnce("rebuild", { headroomPercent: 25 });
    return { cold, warm: warmPull, rebuild };
  } finally {
    transport.close();
    await services.stop();
  }
}

/** skopeo copy + umoci raw unpack + mkfs.ext4 -d, each step timed. */
function baselinePull(reference, dir) {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const oci = join(dir, "oci");
  const bundle = join(dir, "bundle");
  const image = join(dir, "skopeo.ext4");
  try {
    const skopeo = time(() =>
      execFileSync("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${reference}`, `oci:${oci}:v1`]),
    );
    const umoci = time(() =>
      execFileSync("umoci", ["raw", "unpack", "--rootless", "--image", `${oci}:v1`, bundle], { stdio: "ignore" }),
    );
    const mkfs = time(() => {
      const used = Number(execFileSync("du", ["-sb", bundle], { encoding: "utf8" }).split("\t")[0]);
      const mib = Math.ceil((used * 1.2) / 1048576) + 64;
      execFileSync("mkfs.ext4", ["-q", "-F", "-d", bundle, image, `${mib}M`]);
    });
    return {
      seconds: skopeo + umoci + mkfs,
      stages: [`skopeo=${fmt(skopeo)}s umoci=${fmt(umoci)}s mkfs=${fmt(mkfs)}s`],
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function benchPull() {
  if (process.getuid?.() !== 0) {
    console.log("\n## image pull\n\nskipped: building the Debian fixture with mmdebstrap needs root");
    return;
  }
  const run = join(WORK, `run-${process.pid}`);
  rmSync(run, { recursive: true, force: true });
  mkdirSync(run, { recursive: true });
  const registry = await startRegistry(join(run, "registry"));
  try {
    const reference = `${registry.host}/bench/debian:minbase`;
    const image = pushMinbase(reference);
    const banger = [];
    const baseline = [];
    let first;
    for (let round = 0; round < ROUNDS; round++) {
      baseline.push(baselinePull(reference, join(run, "baseline")));
      const pulls = await bangerPulls(reference, { warm: round === 0 });
      first ??= pulls;
      banger.push(pulls.cold);
    }
    const cold = median(banger.map((p) => p.seconds));
    const base = median(baseline.map((p) => p.seconds));
    const mib = (bytes) => `${(bytes / 1048576).toFixed(0)} MiB`;
    console.log(
      `\n## image pull (Debian bookworm minbase: ${mib(image.tarBytes)} of tar, one ${mib(image.layerBytes)} gzip layer, registry on 127.0.0.1; median of ${ROUNDS})\n`,
    );
    printTable(
      ["pipeline", "seconds", "vs skopeo+umoci+mkfs"],
      [
        ["banger pull, empty cache", fmt(cold), fmt(cold / base)],
        ["banger pull, warm cache (built before: copied)", fmt(first.warm.seconds), fmt(first.warm.seconds / base)],
        [
          "banger pull, blobs cached, other build settings",
          fmt(first.rebuild.seconds),
          fmt(first.rebuild.seconds / base),
        ],
        ["skopeo copy + umoci raw unpack + mkfs.ext4 -d", fmt(base), "1.00"],
      ],
    );
    console.log("\nevery cold run, in order:");
    for (const p of banger) console.log(`  banger   ${fmt(p.seconds)} s: ${p.stages.join(" ")}`);
    for (const p of baseline) console.log(`  baseline ${fmt(p.seconds)} s: ${p.stages.join(" ")}`);
    console.log(
      `\nbanger's image: ${mib(Number(first.cold.result?.rootfsBytes ?? 0n))} ext4 with owners, modes and devices restored (skopeo's pipeline restores none of them without root)`,
    );
    report({
      measure: `cold pull, ${mib(image.tarBytes)} Debian minbase, one gzip layer`,
      baseline: `skopeo+umoci+mkfs: ${fmt(base)} s`,
      now: `${fmt(cold)} s`,
      ratio: cold / base,
      goal: 0.6,
    });
  } finally {
    await registry.stop();
    rmSync(run, { recursive: true, force: true });
  }
}
