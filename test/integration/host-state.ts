/**
 * What banger has on the host and on disk, as a test sees it from outside: links in the test's network
 * namespace, NAT rules, loop devices over the state directory, fake VMM processes, and the files of the
 * state and runtime directories. Fault and fork tests compare it before and after a failure.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import type { Cluster } from "./harness.js";
import type { NetNs } from "./netns.js";

/** Every file under `dir` but the database (it records the operations), with its size. */
export function files(dir: string): string[] {
  const out: string[] = [];
  const walk = (path: string) => {
    for (const entry of readdirSync(path, { withFileTypes: true })) {
      const full = join(path, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (!entry.name.startsWith("banger.db")) out.push(`${relative(dir, full)} ${statSync(full).size}`);
    }
  };
  walk(dir);
  return out.sort();
}

export function hostState(ns: NetNs, cluster: Cluster) {
  return {
    // Warm-pool taps get new random names when the pool is topped up: they count, their names do not.
    links: ns
      .links()
      .map((l) => l.ifname)
      .filter((name) => !name.startsWith("bgr-p"))
      .sort(),
    poolTaps: ns.links().filter((l) => l.ifname.startsWith("bgr-p")).length,
    nat: ns
      .ruleset()
      .split("\n")
      .filter((line) => line.includes("masquerade")),
    loops: execFileSync("losetup", ["-l", "-n", "-O", "NAME,BACK-FILE"], { encoding: "utf8" })
      .split("\n")
      .filter((line) => line.includes(cluster.stateDir)),
    vmms: spawnSync("pgrep", ["-f", `fake-vmm.mjs --api-sock ${cluster.runtimeDir}/`], { encoding: "utf8" })
      .stdout.split("\n")
      .filter((l) => l !== ""),
    state: files(cluster.stateDir),
    runtime: files(join(cluster.runtimeDir, "vms")),
  };
}

/** The default warm tap pool's size (config network.tap_pool). */
export const POOL = 4;

/** The warm pool refills in the background after a tap was taken from it: waits (at most 10 s) until it is full. */
export async function poolFull(ns: NetNs, cluster: Cluster): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (hostState(ns, cluster).poolTaps < POOL && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
}
