/**
 * Launching and signalling a VM's VMM through the helper's socket. There is
 * no Firecracker (and no usable KVM) on this machine: the helper is
 * configured with the fake VMM (services/privileged/test-fixtures/fake-vmm.mjs),
 * which takes Firecracker's command line and serves its API socket. Needs root.
 */
import { spawn } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HostService, VmmKind } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { VmmService, VmmSignal } from "@banger/gen/banger/privileged/v1/vmm_pb.js";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, createClient } from "@connectrpc/connect";
import fc from "fast-check";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, waitUntil, OWNER_CAN_READ_CHECKOUT, failure } from "./harness.js";
import { NETNS_TOOLS, VMM_TOOLS, createNetNs, startHelperInNs, type HelperInNs, type NetNs } from "./netns.js";

const OWNER = 1000;
const FAKE_VMM = join(ROOT, "services/privileged/test-fixtures/fake-vmm.mjs");
const RUNS =
  OWNER_CAN_READ_CHECKOUT &&
  requireTools("VMMs launched and signalled by the helper", [...NETNS_TOOLS, ...VMM_TOOLS]).length === 0;
let ns: NetNs;
let dir: string;
let helper: HelperInNs;

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const uidOf = (pid: number) => Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]);

async function start(): Promise<HelperInNs> {
  return startHelperInNs(ns, join(dir, "run"), join(dir, "state"), OWNER, ["--firecracker", FAKE_VMM]);
}

beforeAll(async () => {
  if (!RUNS) return;
  console.log("no Firecracker on this machine: the helper launches test-fixtures/fake-vmm.mjs in its place");
  ns = createNetNs();
  dir = mkdtempSync(join(tmpdir(), "banger-vmm-"));
  chmodSync(dir, 0o755);
  mkdirSync(join(dir, "run"), { mode: 0o755 });
  mkdirSync(join(dir, "state"));
  helper = await start();
});

afterAll(async () => {
  if (!RUNS) return;
  await helper.stop();
  ns.remove();
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!RUNS)("the helper launches VMMs as the owner and signals only with proof", () => {
  it("launches, outlives the helper, is listed after a restart, and stops only with the right proof", async () => {
    let vmm = createClient(VmmService, helper.transport.transport);
    const launched = await vmm.launchVmm({ vmId: "box", kind: VmmKind.FIRECRACKER });
    const { pid } = launched;
    expect(alive(pid)).toBe(true);
    expect(uidOf(pid)).toBe(OWNER); // never root
    expect(launched.controlSocket).toBe(join(dir, "run", "vms", "box", "firecracker.sock"));
    expect((await failure(() => vmm.launchVmm({ vmId: "box", kind: VmmKind.FIRECRACKER }))).code).toBe(
      Code.FailedPrecondition,
    );

    // The VMM's life is not tied to the RPC or to the helper process.
    await helper.stop();
    expect(alive(pid)).toBe(true);
    helper = await start();
    vmm = createClient(VmmService, helper.transport.transport);
    const inventory = await createClient(HostService, helper.transport.transport).getInventory({});
    expect(inventory.vmmProcesses).toEqual([
      expect.objectContaining({ vmId: "box", pid, uid: OWNER, kind: VmmKind.FIRECRACKER }),
    ]);
    const startTime = inventory.vmmProcesses[0]?.startTime;
    expect(startTime && timestampDate(startTime).getTime()).toBe(
      launched.startTime && timestampDate(launched.startTime).getTime(),
    );

    const unrelated = spawn("sleep", ["100"]);
    await waitUntil(() => unrelated.pid !== undefined, undefined, "sleep");
    const otherPid = unrelated.pid ?? 0;
    const later = timestampFromDate(
      new Date(timestampDate(launched.startTime ?? timestampFromDate(new Date())).getTime() + 10_000),
    );
    const refusals: [string, () => Promise<unknown>, Code][] = [
      ["pid 1", () => vmm.signalVmm({ vmId: "box", pid: 1, startTime, signal: VmmSignal.KILL }), Code.InvalidArgument],
      ["pid 0", () => vmm.signalVmm({ vmId: "box", pid: 0, startTime, signal: VmmSignal.KILL }), Code.InvalidArgument],
      ["no start time", () => vmm.signalVmm({ vmId: "box", pid, signal: VmmSignal.KILL }), Code.InvalidArgument],
      ["no signal", () => vmm.signalVmm({ vmId: "box", pid, startTime }), Code.InvalidArgument],
      [
        "a wrong start time (a reused pid)",
        () => vmm.signalVmm({ vmId: "box", pid, startTime: later, signal: VmmSignal.KILL }),
        Code.PermissionDenied,
      ],
      [
        "another VM's id",
        () => vmm.signalVmm({ vmId: "other", pid, startTime, signal: VmmSignal.KILL }),
        Code.PermissionDenied,
      ],
      [
        "an unrelated process",
        () => vmm.signalVmm({ vmId: "box", pid: otherPid, startTime, signal: VmmSignal.KILL }),
        Code.PermissionDenied,
      ],
    ];
    for (const [what, call, code] of refusals) {
      const error = await failure(call);
      expect(error.code, `${what}: ${error.rawMessage}`).toBe(code);
    }
    // GetVmm: the VM's VMM runs, with the CPU time and memory of that process; any other proof is "not
    // running" (what the orchestrator asks while it waits for a stop), and a malformed one is refused.
    const state = await vmm.getVmm({ vmId: "box", pid, startTime });
    expect(state.running).toBe(true);
    expect(state.rssBytes).toBeGreaterThan(1n << 20n); // a Node process
    expect(state.cpuTimeMs).toBeGreaterThan(0n);
    for (const [what, request] of [
      ["a wrong start time", { vmId: "box", pid, startTime: later }],
      ["another VM's id", { vmId: "other", pid, startTime }],
      ["an unrelated process", { vmId: "box", pid: otherPid, startTime }],
    ] as const) {
      expect(await vmm.getVmm(request), what).toMatchObject({ running: false, cpuTimeMs: 0n, rssBytes: 0n });
    }
    for (const request of [
      { vmId: "box", pid: 1, startTime },
      { vmId: "box", pid },
      { vmId: "../x", pid, startTime },
    ]) {
      expect((await failure(() => vmm.getVmm(request))).code).toBe(Code.InvalidArgument);
    }
    expect(alive(pid)).toBe(true);
    expect(alive(otherPid)).toBe(true);
    unrelated.kill();

    expect(await vmm.signalVmm({ vmId: "box", pid, startTime, signal: VmmSignal.TERM })).toMatchObject({
      existed: true,
    });
    await waitUntil(() => !alive(pid), undefined, "the VMM to exit");
    expect(await vmm.signalVmm({ vmId: "box", pid, startTime, signal: VmmSignal.TERM })).toMatchObject({
      existed: false,
    });
    expect((await vmm.getVmm({ vmId: "box", pid, startTime })).running).toBe(false);
    expect((await createClient(HostService, helper.transport.transport).getInventory({})).vmmProcesses).toEqual([]);
  });

  it("refuses bad launch requests with nothing started", async () => {
    const vmm = createClient(VmmService, helper.transport.transport);
    const cases: [string, () => Promise<unknown>][] = [
      ["no kind", () => vmm.launchVmm({ vmId: "box" })],
      ["bad vm id", () => vmm.launchVmm({ vmId: "../x", kind: VmmKind.FIRECRACKER })],
      ["qemu without a machine", () => vmm.launchVmm({ vmId: "box", kind: VmmKind.QEMU_MICROVM })],
      [
        "qemu kernel outside the state dir",
        () =>
          vmm.launchVmm({
            vmId: "box",
            kind: VmmKind.QEMU_MICROVM,
            qemu: {
              vcpu: 1,
              memoryMib: 256,
              kernelPath: "/boot/vmlinuz",
              rootDisk: join(dir, "state", "r"),
              workDisk: join(dir, "state", "w"),
              mac: "02:00:00:00:00:01",
              bootArgs: "console=ttyS0",
            },
          }),
      ],
    ];
    for (const [what, call] of cases) {
      const error = await failure(call);
      expect([Code.InvalidArgument, Code.PermissionDenied], `${what}: ${error.rawMessage}`).toContain(error.code);
    }
    expect((await createClient(HostService, helper.transport.transport).getInventory({})).vmmProcesses).toEqual([]);
  });

  it("survives 1,000 random hostile requests per VMM RPC with nothing started or signalled", async () => {
    const vmm = createClient(VmmService, helper.transport.transport);
    const pid = helper.child.pid;
    const badId = fc.string({ maxLength: 40 }).filter((v) => !/^[a-z0-9][a-z0-9-]{0,31}$/.test(v));
    const text = fc.oneof(fc.string({ maxLength: 50 }), fc.constantFrom("/etc/shadow", "/dev/sda", "../x", "a,b"));
    const machine = fc.record({
      vcpu: fc.nat(),
      memoryMib: fc.nat(),
      kernelPath: text,
      initrdPath: text,
      bootArgs: text,
      rootDisk: text,
      workDisk: text,
      mac: text,
      kvm: fc.boolean(),
      tscKhz: fc.nat(),
    });
    const refused = [Code.InvalidArgument, Code.PermissionDenied, Code.FailedPrecondition];
    const calls: [string, fc.Arbitrary<() => Promise<unknown>>][] = [
      [
        "LaunchVmm",
        fc
          .record({ vmId: badId, kind: fc.constantFrom(0, 1, 2, 99), qemu: fc.option(machine, { nil: undefined }) })
          .map((r) => () => vmm.launchVmm({ ...r, kind: r.kind as VmmKind })),
      ],
      [
        "SignalVmm",
        fc
          .record({
            vmId: badId,
            pid: fc.integer(),
            seconds: fc.integer({ min: 0, max: 2_000_000_000 }),
            signal: fc.constantFrom(0, 1, 2, 7),
          })
          .map(
            (r) => () =>
              vmm.signalVmm({
                vmId: r.vmId,
                pid: r.pid,
                startTime: timestampFromDate(new Date(r.seconds * 1000)),
                signal: r.signal as VmmSignal,
              }),
          ),
      ],
      [
        "GetVmm",
        fc
          .record({ vmId: badId, pid: fc.integer(), seconds: fc.integer({ min: 0, max: 2_000_000_000 }) })
          .map(
            (r) => () =>
              vmm.getVmm({ vmId: r.vmId, pid: r.pid, startTime: timestampFromDate(new Date(r.seconds * 1000)) }),
          ),
      ],
    ];
    for (const [rpc, arbitrary] of calls) {
      await fc.assert(
        fc.asyncProperty(arbitrary, async (call) => {
          const error = await failure(call);
          expect(refused, `${rpc}: ${error.code} ${error.rawMessage}`).toContain(error.code);
        }),
        { numRuns: 1000 },
      );
    }
    expect(helper.child.pid).toBe(pid);
    expect((await createClient(HostService, helper.transport.transport).getInventory({})).vmmProcesses).toEqual([]);
  }, 180_000); // thousands of calls: a correctness test, given room on a loaded machine
});
