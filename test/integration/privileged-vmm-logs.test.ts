/**
 * A guest against the host's runtime directory (a tmpfs): a console that never stops printing must
 * not fill it. The VMM's stdout and stderr go through the log relays the helper starts beside it
 * (as the owner, detached), which keep each log within LaunchVmm's log_max_bytes, survive a helper
 * restart, and leave the newest output where `vm logs` (readLog) reads it. The fake VMM floods when
 * its boot args say `fake.flood=<seconds>`. Needs root.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { HostService, VmmKind } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { VmmService, VmmSignal } from "@banger/gen/banger/privileged/v1/vmm_pb.js";
import { Code, createClient } from "@connectrpc/connect";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readLog } from "../../services/orchestrator/src/core/vm-observe.js";
import { ROOT, OWNER_CAN_READ_CHECKOUT, failure, waitUntil } from "./harness.js";
import { NETNS_TOOLS, VMM_TOOLS, createNetNs, startHelperInNs, type HelperInNs, type NetNs } from "./netns.js";

const OWNER = 1000;
const FAKE_VMM = join(ROOT, "services/privileged/test-fixtures/fake-vmm.mjs");
const CAP = 1024 * 1024;
const FLOOD_SECONDS = 30;
const RUNS =
  OWNER_CAN_READ_CHECKOUT &&
  requireTools("a guest flooding its console", [...NETNS_TOOLS, ...VMM_TOOLS, "ps"]).length === 0;
let ns: NetNs;
let dir: string;
let helper: HelperInNs;

const start = () =>
  startHelperInNs(ns, join(dir, "run"), join(dir, "state"), OWNER, ["--firecracker", FAKE_VMM, "--qemu", FAKE_VMM]);

beforeAll(async () => {
  if (!RUNS) return;
  ns = createNetNs();
  dir = mkdtempSync(join(tmpdir(), "banger-vmm-logs-"));
  chmodSync(dir, 0o755);
  mkdirSync(join(dir, "run"), { mode: 0o755 });
  mkdirSync(join(dir, "state"));
  helper = await start();
});

/** Processes a failed test could leave: killed before the directory goes. */
const started: number[] = [];

afterAll(async () => {
  if (!RUNS) return;
  for (const pid of [...started, ...relays("flood").map((r) => r.pid)]) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  await sleep(100);
  await helper.stop();
  ns.remove();
  rmSync(dir, { recursive: true, force: true });
});

/** Bytes a log keeps: the file and its predecessor. */
function kept(vmDir: string, name: string): number {
  const size = (file: string) => {
    try {
      return statSync(join(vmDir, file)).size;
    } catch {
      return 0;
    }
  };
  return size(name) + size(`${name}.1`);
}

/** The relays of a VM, as `ps` shows them: pid and uid. */
function relays(vmId: string): { pid: number; uid: number }[] {
  return execFileSync("ps", ["-eo", "pid=,uid=,args="], { encoding: "utf8" })
    .split("\n")
    .filter((l) => l.includes("banger-log-relay") && l.includes(` ${vmId} `))
    .map((l) => l.trim().split(/\s+/))
    .map(([pid, uid]) => ({ pid: Number(pid), uid: Number(uid) }));
}

async function tail(path: string, lines: number): Promise<string> {
  const aborted = AbortSignal.abort();
  const parts: Buffer[] = [];
  for await (const chunk of readLog(path, {
    tailLines: lines,
    follow: false,
    signal: aborted,
    stillThere: () => Promise.resolve(true),
  })) {
    parts.push(chunk);
  }
  return Buffer.concat(parts).toString();
}

describe.skipIf(!RUNS)("a guest flooding its console", () => {
  it("keeps console.log and vmm.log within the cap for 30 s, across a helper restart, with the newest lines shown", async () => {
    let vmm = createClient(VmmService, helper.transport.transport);
    const vmId = "flood";
    const state = join(dir, "state");
    const launched = await vmm.launchVmm({
      vmId,
      kind: VmmKind.QEMU_MICROVM,
      logMaxBytes: BigInt(CAP),
      qemu: {
        vcpu: 1,
        memoryMib: 128,
        kernelPath: join(state, "vmlinux"),
        initrdPath: "",
        bootArgs: `console=ttyS0 fake.flood=${FLOOD_SECONDS}`,
        rootDisk: join(state, "root.ext4"),
        workDisk: join(state, "work.ext4"),
        mac: "02:00:0a:00:00:09",
        kvm: false,
        tscKhz: 1_000_000,
      },
    });
    started.push(launched.pid);
    const vmDir = join(dir, "run", "vms", vmId);
    expect(relays(vmId).map((r) => r.uid)).toEqual([OWNER, OWNER]); // as the owner, never root
    const inventory = await createClient(HostService, helper.transport.transport).getInventory({});
    expect(inventory.vmmProcesses.map((p) => p.pid)).toEqual([launched.pid]); // a relay is not the VMM

    const startedAt = Date.now();
    let most = { console: 0, vmm: 0 };
    let restarted = false;
    let lastSeen = 0;
    while (Date.now() - startedAt < (FLOOD_SECONDS + 2) * 1000) {
      most = {
        console: Math.max(most.console, kept(vmDir, "console.log")),
        vmm: Math.max(most.vmm, kept(vmDir, "vmm.log")),
      };
      if (!restarted && Date.now() - startedAt > 10_000) {
        // The relays and the VMM outlive the helper; the flood goes on through the restart.
        await helper.stop();
        helper = await start();
        vmm = createClient(VmmService, helper.transport.transport);
        restarted = true;
        // The newest numbered line; read again while the file has just been rotated (it may hold no whole line yet).
        const newest = async () =>
          Number([...(await tail(join(vmDir, "console.log"), 3)).matchAll(/flood (\d+) x+\n/g)].at(-1)?.[1] ?? 0);
        let n = await newest();
        for (let tries = 0; n === 0 && tries < 25; tries++) {
          await sleep(200);
          n = await newest();
        }
        expect(n).toBeGreaterThan(0);
        lastSeen = n;
      }
      await sleep(200);
    }
    console.log(`flood: most kept console ${most.console} B, vmm ${most.vmm} B (cap ${CAP})`);
    expect(most.console).toBeLessThanOrEqual(CAP);
    expect(most.vmm).toBeLessThanOrEqual(CAP);
    expect(most.console).toBeGreaterThan(CAP / 2); // it did rotate
    // The newest output is what readLog shows: the last numbered line, then the end of the flood.
    await waitUntil(async () => (await tail(join(vmDir, "console.log"), 1)).includes("flood done"), undefined, "done");
    const last = await tail(join(vmDir, "console.log"), 2);
    const done = Number(/flood done (\d+)/.exec(last)?.[1]);
    expect(done).toBeGreaterThan(lastSeen);
    expect(last).toContain(`fake-vmm: flood ${done} `);
    expect(await tail(join(vmDir, "vmm.log"), 1)).toContain("flood done");
    expect(readdirSync(vmDir).sort()).toEqual(
      ["console.log", "console.log.1", "qmp.sock", "vmm.log", "vmm.log.1"].sort(),
    );

    // A relay that dies (the owner killed it) costs the log, not the VMM: its writes fail with EPIPE.
    const [first] = relays(vmId);
    process.kill(first?.pid ?? 0, "SIGKILL");
    await sleep(200);
    expect((await vmm.getVmm({ vmId, pid: launched.pid, startTime: launched.startTime })).running).toBe(true);

    // The relays end with the VMM; RemoveVmmFiles leaves nothing.
    expect((await failure(() => vmm.removeVmmFiles({ vmId }))).code).toBe(Code.FailedPrecondition);
    await vmm.signalVmm({ vmId, pid: launched.pid, startTime: launched.startTime, signal: VmmSignal.KILL });
    await waitUntil(() => relays(vmId).length === 0, undefined, "the relays to end with the VMM");
    expect((await vmm.removeVmmFiles({ vmId })).existed).toBe(true);
    expect(readdirSync(join(dir, "run", "vms"))).toEqual([]);
  }, 120_000);

  it("refuses a log cap out of bounds with INVALID_ARGUMENT, starting nothing", async () => {
    const vmm = createClient(VmmService, helper.transport.transport);
    for (const logMaxBytes of [1n, 4096n, (1n << 30n) + 1n, 1n << 62n]) {
      const error = await failure(() => vmm.launchVmm({ vmId: "capped", kind: VmmKind.FIRECRACKER, logMaxBytes }));
      expect(error.code).toBe(Code.InvalidArgument);
      expect(error.rawMessage).toContain("log_max_bytes");
    }
    expect(relays("capped")).toEqual([]);
  });
});
