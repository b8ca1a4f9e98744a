// Shared pieces of the benchmarks: start the three real services, time things, print a table.
import { spawn } from "node:child_process";
import { chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { build } from "esbuild";

export const ROOT = resolve(import.meta.dirname, "..");

/**
 * A module of the tests' support (TypeScript outside every build, e.g.
 * services/image-puller/test-support/registry/oci-image.ts): esbuild bundles it with what it
 * imports relatively into .bench/test-support/ (packages stay imports), and the bench loads that.
 * `@banger/common/testing` is the alias vitest.config.ts and test/tsconfig.json give the tests.
 */
export async function importTestSupport(path) {
  const outfile = join(ROOT, ".bench", "test-support", path.replace(/\.ts$/, ".mjs"));
  await build({
    entryPoints: [join(ROOT, path)],
    outfile,
    bundle: true,
    packages: "external",
    alias: { "@banger/common/testing": "./packages/common/test-support/requires.ts" },
    absWorkingDir: ROOT,
    platform: "node",
    format: "esm",
    target: "node20",
    logLevel: "warning",
  });
  return import(pathToFileURL(outfile).href);
}

/**
 * The three services as real processes, sockets in a temporary runtime directory.
 * With `owner`, as an installed banger runs them (and as test/integration does):
 * the orchestrator and the puller as that uid and gid, the helper as root with it
 * as its owner, inside `netns` when given, with `helperArgs` (e.g. `--firecracker`
 * pointing at the fake VMM); the directory belongs to the owner and the services
 * read a fresh config directory inside it. `vmm` is the config's VMM (the fake speaks Firecracker's API);
 * `orchestratorInNetns` runs the orchestrator in `netns` too, where it reaches real guests;
 * `nodeArgs` gives node's own flags per service name (e.g. the units' `--jitless` for "privileged"), `env`
 * more environment per service name (the units' `Environment=`): see unitLaunch().
 */
export async function startServices({
  owner,
  netns,
  helperArgs = [],
  vmm = "firecracker",
  configToml = "",
  orchestratorInNetns = false,
  nodeArgs = {},
  env: serviceEnv = {},
} = {}) {
  const dir = mkdtempSync(join(tmpdir(), "banger-bench-"));
  const runtimeDir = join(dir, "run");
  const stateDir = join(dir, "state");
  mkdirSync(runtimeDir, { mode: 0o700 });
  // Firecracker by default, whose API the fake VMM speaks ("auto" would take QEMU on a host without KVM).
  const configDir = join(dir, "config", "banger");
  mkdirSync(configDir, { recursive: true });
  writeFileSync(join(configDir, "config.toml"), `vmm = "${vmm}"\n${configToml}`);
  if (owner !== undefined) {
    mkdirSync(stateDir, { mode: 0o700 });
    for (const path of [dir, runtimeDir, stateDir, join(dir, "config"), configDir, join(configDir, "config.toml")]) {
      chownSync(path, owner, owner);
    }
  }
  const children = [];
  const pids = {};
  const stop = async () => {
    await Promise.all(
      children.map(
        (c) =>
          new Promise((r) =>
            c.exitCode !== null || c.signalCode !== null ? r() : (c.once("exit", r), c.kill("SIGTERM")),
          ),
      ),
    );
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const name of ["privileged", "image-puller", "orchestrator"]) {
      // BENCH_NODE_ARGS: node's own options for every service, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof".
      const args = [
        ...benchNodeArgs(),
        join(ROOT, `services/${name}/dist/bundle/main.js`),
        "--runtime-dir",
        runtimeDir,
      ];
      args.push("--state-dir", stateDir);
      let argv = [process.execPath, ...(nodeArgs[name] ?? []), ...args];
      // The benchmark's own config directory always: the one of whoever runs it must not change the numbers.
      const env = {
        ...process.env,
        ...serviceEnv[name],
        BANGER_LOG_LEVEL: "info",
        XDG_CONFIG_HOME: join(dir, "config"),
        HOME: dir,
      };
      const options = { stdio: ["ignore", "pipe", "inherit"], env };
      if (owner !== undefined) {
        if (name === "privileged") {
          argv.push("--owner-uid", String(owner), "--owner-gid", String(owner), ...helperArgs);
          if (netns) argv = ["ip", "netns", "exec", netns, ...argv];
        } else if (name === "orchestrator" && netns && orchestratorInNetns) {
          // `ip netns exec` needs root: it enters the namespace, then setpriv drops to the owner.
          const drop = ["setpriv", "--reuid", String(owner), "--regid", String(owner), "--clear-groups"];
          argv = ["ip", "netns", "exec", netns, ...drop, ...argv];
        } else {
          Object.assign(options, { uid: owner, gid: owner });
        }
      }
      // Logs go nowhere: the benchmark measures RPCs, not the terminal.
      const child = spawn(argv[0], argv.slice(1), options);
      children.push(child);
      // `ip netns exec` and setpriv exec the service: the child's pid is the service's.
      pids[name] = child.pid;
      await new Promise((resolveStart, reject) => {
        let out = "";
        const onData = (chunk) => {
          out += chunk.toString();
          if (out.includes('"msg":"listening"')) {
            child.stdout.off("data", onData);
            child.stdout.resume();
            resolveStart();
          }
        };
        child.stdout.on("data", onData);
        child.once("exit", (code) => reject(new Error(`${name} exited ${code}: ${out}`)));
      });
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    dir,
    runtimeDir,
    stateDir,
    socket: (name) => join(runtimeDir, `${name}.sock`),
    /** Each service's pid, by name ("privileged", "image-puller", "orchestrator"). */
    pids,
    stop,
  };
}

const UNITS = { orchestrator: "bangerd", privileged: "banger-privileged", "image-puller": "banger-image-puller" };

/**
 * How each service's systemd unit (deploy/systemd/*.service.in) starts it: node's own flags on its
 * `ExecStart=@NODE@ <flags> …/main.js` line and its `Environment=NAME=value` lines, by service name, as
 * startServices() takes them (`banger dev up` reads the same lines: unitNodeLaunch in the CLI).
 */
export function unitLaunch() {
  const nodeArgs = {};
  const env = {};
  for (const [name, unit] of Object.entries(UNITS)) {
    const text = readFileSync(join(ROOT, "deploy/systemd", `${unit}.service.in`), "utf8");
    const exec = /^ExecStart=@NODE@ (.*?)\S*\/main\.js /m.exec(text);
    if (!exec) throw new Error(`no ExecStart=@NODE@ … main.js in ${unit}.service.in`);
    nodeArgs[name] = exec[1].split(" ").filter((a) => a !== "");
    env[name] = Object.fromEntries(
      [...text.matchAll(/^Environment=([A-Za-z_][A-Za-z0-9_]*)=(\S*)$/gm)].map(([, k, v]) => [k, v]),
    );
  }
  return { nodeArgs, env };
}

/** Node's options for the processes a bench starts (BENCH_NODE_ARGS, space-separated). */
export function benchNodeArgs() {
  return (process.env.BENCH_NODE_ARGS ?? "").split(" ").filter(Boolean);
}

export function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Runs `call` `total` times with `concurrency` in flight; latencies in ms and calls per second. */
export async function measure(call, { total, concurrency, warmup = 200 }) {
  for (let i = 0; i < warmup; i++) await call();
  const latencies = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) {
        next++;
        const t0 = performance.now();
        await call();
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const elapsed = performance.now() - started;
  latencies.sort((a, b) => a - b);
  return { p50: percentile(latencies, 50), p99: percentile(latencies, 99), perSecond: (total / elapsed) * 1000 };
}

export function fmt(n, digits = 2) {
  return n.toFixed(digits);
}

export function printTable(header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => cells.map((c, i) => String(c).padEnd(widths[i])).join("  ");
  console.log(line(header));
  for (const row of rows) console.log(line(row));
}

/**
 * The summary `npm run bench` ends with: each bench reports its rows here — what was measured,
 * the baseline timed in the same run, banger's figure, their ratio and the goal (docs: issue's table).
 * `goal` is the ratio to reach; `lowerIsBetter` false for throughput-like ratios.
 */
const summary = [];
export function report({ measure, baseline, now, ratio, goal, lowerIsBetter = true }) {
  summary.push({ measure, baseline, now, ratio, goal, lowerIsBetter });
}

export function printSummary() {
  if (summary.length === 0) return;
  console.log("\n## summary: ratios against the goals (baselines measured in this run)\n");
  printTable(
    ["measure", "baseline", "banger", "ratio", "goal", "met"],
    summary.map((r) => [
      r.measure,
      r.baseline,
      r.now,
      Number.isFinite(r.ratio) ? `${fmt(r.ratio)}x` : "-",
      r.goal === undefined ? "-" : `${r.lowerIsBetter ? "≤" : "≥"} ${r.goal}x`,
      r.goal === undefined || !Number.isFinite(r.ratio)
        ? "-"
        : (r.lowerIsBetter ? r.ratio <= r.goal : r.ratio >= r.goal)
          ? "yes"
          : "no",
    ]),
  );
}
