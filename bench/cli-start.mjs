// Cold start of `./bin/banger --version` (the CLI alone) and `./bin/banger daemon status` (the CLI and the status
// RPC through all three services) against `node -e 0`, as ratios. The three take turns, run by run, so that a
// machine whose speed drifts during the bench moves all of them alike.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { ROOT, fmt, percentile, printTable, report, startServices } from "./lib.mjs";

const RUNS = Number(process.env.BENCH_RUNS ?? 20);

/** p50 and min of each command's wall time, over RUNS turns after two warm-up turns that fill the page cache. */
function timeInTurns(commands, env) {
  const samples = commands.map(() => []);
  for (let i = 0; i < RUNS + 2; i++) {
    commands.forEach(({ argv }, c) => {
      const t0 = performance.now();
      const r = spawnSync(argv[0], argv.slice(1), { env: { ...process.env, ...env }, stdio: "ignore" });
      if (r.status !== 0) throw new Error(`${argv.join(" ")} exited ${r.status}`);
      if (i >= 2) samples[c].push(performance.now() - t0);
    });
  }
  return samples.map((s) => {
    s.sort((a, b) => a - b);
    return { p50: percentile(s, 50), min: s[0] };
  });
}

export async function benchCliStart() {
  const services = await startServices();
  try {
    const banger = join(ROOT, "bin/banger");
    const commands = [
      { label: "node -e 0", argv: [process.execPath, "-e", "0"] },
      { label: "./bin/banger --version", argv: [banger, "--version"] },
      { label: "./bin/banger daemon status", argv: [banger, "daemon", "status"] },
    ];
    const results = timeInTurns(commands, { BANGER_RUNTIME_DIR: services.runtimeDir });
    const [node, version, status] = results;
    console.log(`\n## CLI cold start (${RUNS} runs each, in turns, median)\n`);
    printTable(
      ["command", "p50 ms", "min ms"],
      commands.map(({ label }, c) => [label, fmt(results[c].p50, 1), fmt(results[c].min, 1)]),
    );
    console.log(
      `\nratio: banger --version takes ${fmt(version.p50 / node.p50)}x node -e 0 (the CLI's own start); ` +
        `daemon status ${fmt(status.p50 / node.p50)}x (the status command's modules and the RPC through all three ` +
        `services on top: ${fmt(status.p50 - version.p50, 1)} ms)`,
    );
    report({
      measure: "CLI `banger --version` cold",
      baseline: `node -e 0: ${fmt(node.p50, 0)} ms`,
      now: `${fmt(version.p50, 0)} ms`,
      ratio: version.p50 / node.p50,
      goal: 1.5,
    });
    report({
      measure: "CLI `banger daemon status` cold",
      baseline: `node -e 0: ${fmt(node.p50, 0)} ms`,
      now: `${fmt(status.p50, 0)} ms`,
      ratio: status.p50 / node.p50,
      goal: 1.5,
    });
  } finally {
    await services.stop();
  }
}
