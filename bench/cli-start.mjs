// Cold start of `./bin/banger daemon status` against `node -e 0`, as a ratio.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { ROOT, fmt, percentile, printTable, report, startServices } from "./lib.mjs";

const RUNS = Number(process.env.BENCH_RUNS ?? 20);

function time(argv, env) {
  const samples = [];
  for (let i = 0; i < RUNS + 2; i++) {
    const t0 = performance.now();
    const r = spawnSync(argv[0], argv.slice(1), { env: { ...process.env, ...env }, stdio: "ignore" });
    if (r.status !== 0) throw new Error(`${argv.join(" ")} exited ${r.status}`);
    if (i >= 2) samples.push(performance.now() - t0); // two warm-up runs fill the page cache
  }
  samples.sort((a, b) => a - b);
  return { p50: percentile(samples, 50), min: samples[0] };
}

export async function benchCliStart() {
  const services = await startServices();
  try {
    const node = time([process.execPath, "-e", "0"], {});
    const banger = time([join(ROOT, "bin/banger"), "daemon", "status"], { BANGER_RUNTIME_DIR: services.runtimeDir });
    console.log(`\n## CLI cold start (${RUNS} runs each, median)\n`);
    printTable(
      ["command", "p50 ms", "min ms"],
      [
        ["node -e 0", fmt(node.p50, 1), fmt(node.min, 1)],
        ["./bin/banger daemon status", fmt(banger.p50, 1), fmt(banger.min, 1)],
      ],
    );
    console.log(
      `\nratio: banger daemon status takes ${fmt(banger.p50 / node.p50)}x node -e 0 (includes the status RPC through all three services)`,
    );
    report({
      measure: "CLI `banger daemon status` cold",
      baseline: `node -e 0: ${fmt(node.p50, 0)} ms`,
      now: `${fmt(banger.p50, 0)} ms`,
      ratio: banger.p50 / node.p50,
      goal: 1.5,
    });
  } finally {
    await services.stop();
  }
}
