// Idle resident memory of each service: the three real services as an installed banger runs them
// (orchestrator and puller as uid 1000, the helper as root in a throwaway network namespace; node's
// flags as each one's systemd unit in deploy/systemd/ passes them), VmRSS
// from /proc/<pid>/status once they listen and settle, then again after some calls have gone through
// every hop (GetStatus: orchestrator → helper + puller; the lists) and they settled again.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createUnixTransport } from "@banger/common";
import { ImageService } from "@banger/gen/banger/v1/image_pb.js";
import { KernelService } from "@banger/gen/banger/v1/kernel_pb.js";
import { SystemService } from "@banger/gen/banger/v1/system_pb.js";
import { VmService } from "@banger/gen/banger/v1/vm_pb.js";
import { createClient } from "@connectrpc/connect";
import { ROOT, fmt, printTable, report, startServices } from "./lib.mjs";

const OWNER = 1000;
const GOAL_MB = 60;
const CALLS = 200;
const SETTLE_MS = 3_000;
const SERVICES = ["orchestrator", "privileged", "image-puller"];
const UNITS = { orchestrator: "bangerd", privileged: "banger-privileged", "image-puller": "banger-image-puller" };

/**
 * node's own flags in each service's unit (`ExecStart=@NODE@ <flags> …/main.js …`), so that the services
 * run here as installed; BENCH_RSS_NODE_ARGS adds more to all three (to try a flag).
 */
function unitNodeArgs() {
  const extra = (process.env.BENCH_RSS_NODE_ARGS ?? "").split(" ").filter((a) => a !== "");
  return Object.fromEntries(
    SERVICES.map((name) => {
      const unit = readFileSync(join(ROOT, "deploy/systemd", `${UNITS[name]}.service.in`), "utf8");
      const exec = /^ExecStart=@NODE@ (.*?)\S*\/main\.js/m.exec(unit);
      if (!exec) throw new Error(`no ExecStart=@NODE@ … main.js in ${UNITS[name]}.service.in`);
      return [name, [...exec[1].split(" ").filter((a) => a !== ""), ...extra]];
    }),
  );
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
  try {
    const nodeArgs = unitNodeArgs();
    services = await startServices({ owner: OWNER, netns, nodeArgs });
    await sleep(SETTLE_MS);
    const atStart = Object.fromEntries(SERVICES.map((name) => [name, rss(services.pids[name])]));

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
    await sleep(SETTLE_MS);
    const afterCalls = Object.fromEntries(SERVICES.map((name) => [name, rss(services.pids[name])]));

    console.log(heading);
    console.log(
      `Settled ${SETTLE_MS / 1000} s after listening, then after ${CALLS} rounds of GetStatus, ListVms, ListImages\n` +
        `and ListKernels through the orchestrator and ${SETTLE_MS / 1000} s more. MB = 10^6 bytes. Goal: ${GOAL_MB} MB each.\n` +
        `node's flags (the units'): ${SERVICES.map((n) => `${n}: ${nodeArgs[n].join(" ") || "none"}`).join("; ")}\n`,
    );
    printTable(
      ["service", "idle MB", "  anon", "  file", "after calls MB", "  anon", "  file", "  Pss"],
      SERVICES.map((name) => [
        name,
        fmt(atStart[name].rss, 1),
        fmt(atStart[name].anon, 1),
        fmt(atStart[name].file, 1),
        fmt(afterCalls[name].rss, 1),
        fmt(afterCalls[name].anon, 1),
        fmt(afterCalls[name].file, 1),
        fmt(afterCalls[name].pss, 1),
      ]),
    );
    for (const name of SERVICES) {
      const worst = Math.max(atStart[name].rss, afterCalls[name].rss);
      report({
        measure: `idle RSS, ${name}`,
        baseline: `goal ${GOAL_MB} MB`,
        now: `${fmt(worst, 1)} MB`,
        ratio: worst / GOAL_MB,
        goal: 1.0,
      });
    }
  } finally {
    transport?.close();
    await services?.stop();
    execFileSync("ip", ["netns", "del", netns]);
  }
}
