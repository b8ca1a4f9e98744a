// Unary call latency over the Unix socket, direct to the helper and through the
// orchestrator (orchestrator → helper + puller hop), sequential and at concurrency 64,
// against the floor: a bare Connect server serving the same generated HostService on a
// Unix socket (rpc-floor.mjs, its own process), called with the same client transport.
// The three are measured in turns, BENCH_ROUNDS rounds, and each figure is the median of its rounds.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createUnixTransport } from "@banger/common";
import { HostService } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { SystemService } from "@banger/gen/banger/v1/system_pb.js";
import { createClient } from "@connectrpc/connect";
import { benchNodeArgs, fmt, measure, printTable, report, startServices } from "./lib.mjs";

const SEQUENTIAL = Number(process.env.BENCH_CALLS ?? 2000);
const CONCURRENT = SEQUENTIAL * 2;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
/** GetStatus's hops in a row: the caller → the orchestrator, the orchestrator → the helper and the puller (in parallel). */
const STATUS_HOPS = 2;
const PER_HOP_MS = 0.5;

export async function benchRpc() {
  const services = await startServices();
  const floor = await startFloor(join(services.runtimeDir, "floor.sock"));
  try {
    const transports = {
      floor: createUnixTransport(floor.socket, { peer: "bare Connect server" }),
      helper: createUnixTransport(services.socket("privileged"), { peer: "helper" }),
      orchestrator: createUnixTransport(services.socket("orchestrator"), { peer: "orchestrator" }),
    };
    const bare = createClient(HostService, transports.floor.transport);
    const host = createClient(HostService, transports.helper.transport);
    const system = createClient(SystemService, transports.orchestrator.transport);
    // The servers' pids, for the CPU time they spend per call: on a loaded machine latency is
    // mostly waiting for a core, CPU time is not.
    const status = await system.getStatus({});
    const pidOf = (name) => status.services.find((s) => s.name === name).pid;
    const servicePids = ["orchestrator", "privileged", "image-puller"].map(pidOf);
    const calls = [
      ["bare Connect server GetVersion (floor)", () => bare.getVersion({}), [floor.pid]],
      ["helper GetVersion (direct)", () => host.getVersion({}), [pidOf("privileged")]],
      // Without the host feature probe (the handler's own work): the RPC path alone, as status asks.
      ["helper GetVersion identity_only", () => host.getVersion({ identityOnly: true }), [pidOf("privileged")]],
      ["orchestrator GetStatus (→ helper + puller)", () => system.getStatus({}), servicePids],
    ];

    const rounds = calls.map(() => []);
    for (let round = 0; round < ROUNDS; round++) {
      for (const [i, [, call, pids]] of calls.entries()) {
        const cpu0 = cpuMs(pids);
        const seq = await measure(call, { total: SEQUENTIAL, concurrency: 1 });
        const cpu1 = cpuMs(pids);
        const par = await measure(call, { total: CONCURRENT, concurrency: 64 });
        const cpu2 = cpuMs(pids);
        // measure() makes 200 warm-up calls before the timed ones.
        const seqCpu = (cpu1 - cpu0) / (SEQUENTIAL + 200);
        const parCpu = (cpu2 - cpu1) / (CONCURRENT + 200);
        rounds[i].push({ seq, par, seqCpu, parCpu });
      }
    }
    const results = rounds.map((r) => ({
      seq: { p50: median(r.map((x) => x.seq.p50)), p99: median(r.map((x) => x.seq.p99)) },
      seqPerSecond: median(r.map((x) => x.seq.perSecond)),
      par: { p50: median(r.map((x) => x.par.p50)), p99: median(r.map((x) => x.par.p99)) },
      parPerSecond: median(r.map((x) => x.par.perSecond)),
      spread: spread(r.map((x) => x.seq.p50)),
      seqCpu: median(r.map((x) => x.seqCpu)),
      parCpu: median(r.map((x) => x.parCpu)),
    }));

    console.log(
      `\n## unary RPC over a Unix socket (${SEQUENTIAL} sequential calls, ${CONCURRENT} at concurrency 64; median of ${ROUNDS} rounds)\n`,
    );
    printTable(
      [
        "call",
        "seq p50 ms",
        "seq p99 ms",
        "seq calls/s",
        "c64 p50 ms",
        "c64 p99 ms",
        "c64 calls/s",
        "seq p50 spread",
        "server CPU ms/call seq",
        "c64",
      ],
      calls.map(([label], i) => {
        const r = results[i];
        return [
          label,
          fmt(r.seq.p50, 3),
          fmt(r.seq.p99),
          fmt(r.seqPerSecond, 0),
          fmt(r.par.p50),
          fmt(r.par.p99),
          fmt(r.parPerSecond, 0),
          `±${fmt(r.spread * 100, 0)}%`,
          fmt(r.seqCpu, 3),
          fmt(r.parCpu, 3),
        ];
      }),
    );
    const [f, d, i, h] = results;
    const statusBudget = d.seq.p50 + PER_HOP_MS * STATUS_HOPS;
    console.log(
      `\nhelper GetVersion: ${fmt(d.seq.p50 / f.seq.p50)}x the floor's p50, ${fmt(d.parPerSecond / f.parPerSecond)}x its calls/s at c64` +
        ` (identity_only: ${fmt(i.seq.p50 / f.seq.p50)}x, ${fmt(i.parPerSecond / f.parPerSecond)}x)` +
        `\nGetStatus: ${fmt(h.seq.p50, 3)} ms = the direct call + ${fmt(h.seq.p50 - d.seq.p50, 3)} ms over ${STATUS_HOPS} hops (budget ${fmt(statusBudget, 3)} ms)`,
    );
    report({
      measure: "unary RPC, helper GetVersion, sequential p50",
      baseline: `bare Connect server: ${fmt(f.seq.p50)} ms`,
      now: `${fmt(d.seq.p50)} ms`,
      ratio: d.seq.p50 / f.seq.p50,
      goal: 1.2,
    });
    report({
      measure: "same, throughput at concurrency 64",
      baseline: `bare: ${fmt(f.parPerSecond, 0)} calls/s`,
      now: `${fmt(d.parPerSecond, 0)}/s`,
      ratio: d.parPerSecond / f.parPerSecond,
      goal: 0.9,
      lowerIsBetter: false,
    });
    report({
      measure: "orchestrator GetStatus (→ helper + puller)",
      baseline: `direct ${fmt(d.seq.p50)} + ${PER_HOP_MS} ms × ${STATUS_HOPS} hops = ${fmt(statusBudget)} ms`,
      now: `${fmt(h.seq.p50)} ms`,
      ratio: h.seq.p50 / statusBudget,
      goal: 1,
    });
    for (const t of Object.values(transports)) t.close();
  } finally {
    await floor.stop();
    await services.stop();
  }
}

/** The bare Connect server (rpc-floor.mjs) as its own process, like the services. */
async function startFloor(socket) {
  const child = spawn(process.execPath, [...benchNodeArgs(), join(import.meta.dirname, "rpc-floor.mjs"), socket], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (chunk) => {
      out += chunk.toString();
      if (out.includes("listening")) resolve();
    });
    child.once("exit", (code) => reject(new Error(`the bare Connect server exited ${code}: ${out}`)));
  });
  return {
    socket,
    pid: child.pid,
    stop: () =>
      new Promise((resolve) =>
        child.exitCode !== null || child.signalCode !== null ? resolve() : (child.once("exit", resolve), child.kill()),
      ),
  };
}

const TICK_MS = 10; // USER_HZ is 100 on Linux

/** CPU time (user + system) the processes have used so far, in ms (/proc/<pid>/stat). */
function cpuMs(pids) {
  let ticks = 0;
  for (const pid of pids) {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    ticks += Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15 of stat)
  }
  return ticks * TICK_MS;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Half the range of a figure across rounds, relative to its median: how noisy the run was. */
function spread(values) {
  return (Math.max(...values) - Math.min(...values)) / 2 / median(values);
}
