// Idle resident memory of each service: the three real services as an installed banger runs them
// (orchestrator and puller as uid 1000, the helper as root in a throwaway network namespace; node's
// flags and environment as each one's systemd unit in deploy/systemd/ gives them), VmRSS
// from /proc/<pid>/status once they listen and settle, then again after some calls have gone through
// every hop (GetStatus: orchestrator → helper + puller; the lists): 3 s after the last call, and once
// settled. Settled is after the services' idle collection (packages/common/src/idle-gc.ts: gc() 30 s
// and 36 s after the last call), which V8's own memory reducer may never do. The floor: a bare
// `node` with a timer, as uid 1000, measured beside them.
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createUnixTransport } from "@banger/common";
import { ImageService } from "@banger/gen/banger/v1/image_pb.js";
import { KernelService } from "@banger/gen/banger/v1/kernel_pb.js";
import { SystemService } from "@banger/gen/banger/v1/system_pb.js";
import { VmService } from "@banger/gen/banger/v1/vm_pb.js";
import { createClient } from "@connectrpc/connect";
import { fmt, printTable, report, startServices, unitLaunch } from "./lib.mjs";

const OWNER = 1000;
const GOAL_MB = 60;
const CALLS = 200;
/** Just after the calls, as the bench measured before the idle collection. */
const AFTER_CALLS_MS = 3_000;
/** Past the idle collection's second gc() (36 s after the last call) and its pages' release. */
const SETTLE_MS = 40_000;
const SERVICES = ["orchestrator", "privileged", "image-puller"];

/** The units' flags and environment; BENCH_RSS_NODE_ARGS adds node flags to all three (to try a flag). */
function serviceLaunch() {
  const extra = (process.env.BENCH_RSS_NODE_ARGS ?? "").split(" ").filter((a) => a !== "");
  const { nodeArgs, env } = unitLaunch();
  for (const name of SERVICES) nodeArgs[name] = [...nodeArgs[name], ...extra];
  return { nodeArgs, env };
}

/** A bare node that only waits, as uid 1000: what any node process costs here. */
function startFloor() {
  const child = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], {
    stdio: "ignore",
    uid: OWNER,
    gid: OWNER,
  });
  return { pid: child.pid, stop: () => child.kill() };
}

/** VmRSS, its parts (anonymous, file-backed) and Pss of `pid`, in MB (10^6 bytes, as the goal says MB; kB in /proc). */
function rss(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (field) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
  const mb = (v) => (v * 1024) / 1e6;
  // Pss: the file-backed pages (node's binary, mostly) shared between the three count a third each.
  const pss = Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"))?.[1] ?? NaN);
  return { rss: mb(kb("VmRSS")), anon: mb(kb("RssAnon")), file: mb(kb("RssFile")), pss: mb(pss) };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function benchRss() {
  const heading = "\n## idle resident memory of each service (VmRSS)\n";
  if (process.getuid?.() !== 0) {
    console.log(`${heading}\nskipped: needs root (a network namespace, and the services as uid ${OWNER})`);
    return;
  }
  const netns = `bgrr-${randomBytes(4).toString("hex")}`;
  execFileSync("ip", ["netns", "add", netns]);
  let services;
  let transport;
  let floor;
  try {
    const launch = serviceLaunch();
    services = await startServices({ owner: OWNER, netns, ...launch });
    floor = startFloor();
    await sleep(SETTLE_MS);
    const measureAll = () => ({
      ...Object.fromEntries(SERVICES.map((name) => [name, rss(services.pids[name])])),
      floor: rss(floor.pid),
    });
    const atStart = measureAll();

    transport = createUnixTransport(services.socket("orchestrator"), { peer: "orchestrator" });
    const system = createClient(SystemService, transport.transport);
    const vms = createClient(VmService, transport.transport);
    const images = createClient(ImageService, transport.transport);
    const kernels = createClient(KernelService, transport.transport);
    for (let i = 0; i < CALLS; i++) {
      await Promise.all([system.getStatus({}), vms.listVms({}), images.listImages({}), kernels.listKernels({})]);
    }
    transport.close();
    transport = undefined;
    await sleep(AFTER_CALLS_MS);
    const afterCalls = measureAll();
    await sleep(SETTLE_MS - AFTER_CALLS_MS);
    const settled = measureAll();

    console.log(heading);
    console.log(
      `Settled ${SETTLE_MS / 1000} s after listening, then after ${CALLS} rounds of GetStatus, ListVms, ListImages\n` +
        `and ListKernels through the orchestrator: ${AFTER_CALLS_MS / 1000} s after the last call, and settled (${SETTLE_MS / 1000} s).\n` +
        `MB = 10^6 bytes. Goal: ${GOAL_MB} MB each. floor: a bare node with a timer.\n` +
        `node's flags (the units'): ${SERVICES.map((n) => `${n}: ${launch.nodeArgs[n].join(" ") || "none"}`).join("; ")}\n` +
        `environment (the units'): ${SERVICES.map(
          (n) =>
            `${n}: ${
              Object.entries(launch.env[n])
                .map(([k, v]) => `${k}=${v}`)
                .join(" ") || "none"
            }`,
        ).join("; ")}\n`,
    );
    printTable(
      [
        "service",
        "idle MB",
        "  anon",
        "  file",
        `+${AFTER_CALLS_MS / 1000} s MB`,
        "settled MB",
        "  anon",
        "  file",
        "  Pss",
      ],
      [...SERVICES, "floor"].map((name) => [
        name,
        fmt(atStart[name].rss, 1),
        fmt(atStart[name].anon, 1),
        fmt(atStart[name].file, 1),
        fmt(afterCalls[name].rss, 1),
        fmt(settled[name].rss, 1),
        fmt(settled[name].anon, 1),
        fmt(settled[name].file, 1),
        fmt(settled[name].pss, 1),
      ]),
    );
    for (const name of SERVICES) {
      const worst = Math.max(atStart[name].rss, settled[name].rss);
      report({
        measure: `idle RSS, ${name}`,
        baseline: `goal ${GOAL_MB} MB (bare node ${fmt(settled.floor.rss, 1)})`,
        now: `${fmt(worst, 1)} MB`,
        ratio: worst / GOAL_MB,
        goal: 1.0,
      });
    }
  } finally {
    floor?.stop();
    transport?.close();
    await services?.stop();
    execFileSync("ip", ["netns", "del", netns]);
  }
}
