import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  OperationKind,
  OperationSchema,
  OperationState,
  StageState,
  type Operation,
} from "@banger/gen/banger/v1/operation_pb.js";
import { AgentHealth, VmSchema, VmState, type Vm } from "@banger/gen/banger/v1/resources_pb.js";
import { GetCapacityResponseSchema } from "@banger/gen/banger/v1/system_pb.js";
import { VmStatsResponseSchema, type VmStatsResponse } from "@banger/gen/banger/v1/vm_pb.js";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import {
  TABLE_HEADER,
  barLine,
  capacityUsage,
  operationLine,
  operationsToShow,
  screenLines,
  size,
  snapshotText,
  vmRow,
  type TopData,
} from "./top-view.js";

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;
const NOW = new Date("2026-12-07T12:00:00Z");

const vm = (name: string, state: VmState, vcpu = 2, memoryMib = 1024): Vm =>
  create(VmSchema, {
    name,
    state,
    vcpu,
    memoryMib,
    guestIp: "172.30.0.12",
    agentHealth: state === VmState.RUNNING ? AgentHealth.OK : AgentHealth.UNSPECIFIED,
  });

const capacity = create(GetCapacityResponseSchema, {
  hostCpus: 8,
  hostMemoryBytes: BigInt(16 * GIB),
  stateDir: "/var/lib/banger",
  stateFsSizeBytes: BigInt(100 * GIB),
  stateFsUsedBytes: BigInt(40 * GIB),
  allocatedBytes: BigInt(3 * GIB),
  vms: [
    { name: "web", rootDiskAllocatedBytes: BigInt(GIB), workDiskAllocatedBytes: BigInt(GIB) },
    { name: "db", rootDiskAllocatedBytes: BigInt(512 * MIB), workDiskAllocatedBytes: BigInt(512 * MIB) },
  ],
});

const stats = (cpuPercent: number, rss: number): VmStatsResponse =>
  create(VmStatsResponseSchema, { cpuPercent, memoryRssBytes: BigInt(rss) });

const op = (id: string, state: OperationState, extra: MessageInitShape<typeof OperationSchema> = {}): Operation =>
  create(OperationSchema, { id, kind: OperationKind.CREATE_VM, target: "web", state, ...extra });

const data = (vms: Vm[], operations: Operation[] = []): TopData => ({
  vms,
  stats: new Map([["web", stats(12.34, 300 * MIB)]]),
  capacity,
  operations,
});

describe("capacity bars", () => {
  it("count the vCPUs and memory of the VMs that run (starting, stopping and paused too), not of stopped or failed ones", () => {
    const vms = [
      vm("web", VmState.RUNNING, 2, 2048),
      vm("boot", VmState.STARTING, 1, 512),
      vm("held", VmState.PAUSED, 1, 512),
      vm("db", VmState.STOPPED, 4, 4096),
      vm("bad", VmState.FAILED, 4, 4096),
    ];
    const [cpu, ram, disk] = capacityUsage({ vms, capacity });
    expect(cpu).toMatchObject({ label: "CPU", used: 4, total: 8, detail: "4/8 vCPU" });
    expect(ram).toMatchObject({ label: "RAM", used: 3072 * MIB, total: 16 * GIB, detail: "3.0G/16G" });
    // Disk: what all VMs' files allocate (stopped ones too) against the state filesystem's size.
    expect(disk).toMatchObject({ label: "DISK", used: 3 * GIB, total: 100 * GIB, detail: "3.0G/100G (fs 40G used)" });
  });

  it("draw the share of the total, cut to the width; overcommit fills the bar and says more than 100%", () => {
    const line = barLine({ label: "CPU", used: 2, total: 8, detail: "2/8 vCPU" }, 60);
    expect(line.length).toBeLessThanOrEqual(60);
    expect(line).toMatch(/^CPU  \[(#+)(-+)\]  25%  2\/8 vCPU$/);
    const [, filled = "", empty = ""] = /\[(#*)(-*)\]/.exec(line) ?? [];
    expect(filled.length / (filled.length + empty.length)).toBeCloseTo(0.25, 1);
    const over = barLine({ label: "CPU", used: 12, total: 8, detail: "12/8 vCPU" }, 60);
    expect(over).toMatch(/\[#+\] 150%/);
    // Before the host's numbers arrive: an empty bar at 0%, not a division by zero.
    expect(barLine({ label: "RAM", used: 0, total: 0, detail: "0/0" }, 60)).toMatch(/\[-+\]   0%/);
  });

  it("sizes read as binary units", () => {
    expect([0, 1023, 1024, 300 * MIB, 1.5 * GIB, 100 * GIB, 2048 * GIB].map(size)).toEqual([
      "0",
      "1023",
      "1.0K",
      "300M",
      "1.5G",
      "100G",
      "2.0T",
    ]);
  });
});

describe("VM rows", () => {
  it("show state, health, IP, vCPU, memory, the stats of a running VM and its allocated disk", () => {
    expect(vmRow(vm("web", VmState.RUNNING), stats(12.34, 300 * MIB), capacity)).toEqual([
      "web",
      "running",
      "ok",
      "172.30.0.12",
      "2",
      "1.0G",
      "12.3",
      "300M",
      "2.0G",
    ]);
    // A stopped VM has no stats, still its disk; a VM GetCapacity did not list yet has none.
    expect(vmRow(vm("db", VmState.STOPPED), undefined, capacity).slice(1)).toEqual([
      "stopped",
      "-",
      "172.30.0.12",
      "2",
      "1.0G",
      "-",
      "-",
      "1.0G",
    ]);
    expect(vmRow(vm("new", VmState.CREATING), undefined, capacity)[8]).toBe("-");
  });

  it("fit 80 columns even with a 32-character name", () => {
    const long = "a".repeat(32);
    const text = snapshotText(data([vm(long, VmState.RUNNING)]), NOW);
    for (const line of text.split("\n")) expect(line.length, line).toBeLessThanOrEqual(80);
    expect(text).toContain(`${"a".repeat(13)}…`);
    expect(TABLE_HEADER).toMatch(/^NAME +STATE +HEALTH +IP +VCPU +MEM +CPU% +RSS +DISK$/);
  });
});

describe("operations", () => {
  const t = (s: number) => timestampFromDate(new Date(NOW.getTime() - s * 1000));
  it("a running one shows its running stage and its place in the plan, with byte progress when known", () => {
    const running = op("op-000000000001", OperationState.RUNNING, {
      stages: [
        { name: "resolve-image", state: StageState.DONE },
        {
          name: "root-disk",
          state: StageState.RUNNING,
          progress: { doneBytes: 25n, totalBytes: 100n, items: [] },
        },
        { name: "wait-ssh", state: StageState.PENDING },
      ],
    });
    expect(operationLine(running, NOW)).toMatch(/^op-000000000001 create +web +running +root-disk 2\/3 25%$/);
  });

  it("an ended one says how long ago, and where it failed", () => {
    const done = op("op-000000000002", OperationState.SUCCEEDED, { endTime: t(75) });
    expect(operationLine(done, NOW)).toMatch(/succeeded +1m ago$/);
    const failed = op("op-000000000003", OperationState.FAILED, {
      endTime: t(5),
      error: { stage: "tap", message: "no", code: "internal", reason: "X" },
    });
    expect(operationLine(failed, NOW)).toMatch(/failed +5s ago at tap$/);
  });

  it("the running ones come first, then the most recent ended ones", () => {
    const ops = [
      op("op-0000000000e1", OperationState.SUCCEEDED),
      op("op-0000000000r1", OperationState.RUNNING),
      op("op-0000000000e2", OperationState.FAILED),
      op("op-0000000000p1", OperationState.PENDING),
    ];
    expect(operationsToShow(ops, 3).map((o) => o.id)).toEqual([
      "op-0000000000r1",
      "op-0000000000p1",
      "op-0000000000e1",
    ]);
  });
});

describe("the screen", () => {
  const state = { selected: 0, status: "", title: "banger top" };

  it("fills exactly 80×24: title, three bars, the table, operations, status and keys", () => {
    const vms = [vm("web", VmState.RUNNING), vm("db", VmState.STOPPED)];
    const lines = screenLines(data(vms, [op("op-000000000001", OperationState.RUNNING)]), state, 80, 24, NOW);
    expect(lines).toHaveLength(24);
    for (const line of lines) expect(line.text.length).toBeLessThanOrEqual(80);
    const texts = lines.map((l) => l.text);
    expect(texts.slice(1, 4).map((l) => l.slice(0, 4))).toEqual(["CPU ", "RAM ", "DISK"]);
    expect(texts[4]).toBe(TABLE_HEADER);
    expect(texts[5]).toMatch(/^web +running/);
    expect(lines[5]?.selected).toBe(true);
    expect(lines[6]?.selected).toBe(false);
    expect(texts).toContain("OPERATIONS");
    expect(texts[23]).toMatch(/q quit/);
  });

  it("scrolls the table so that the selected VM stays on screen", () => {
    const vms = Array.from({ length: 40 }, (_, i) => vm(`vm${i}`, VmState.STOPPED));
    const lines = screenLines(
      data(vms, [op("op-000000000001", OperationState.RUNNING)]),
      { ...state, selected: 39 },
      80,
      24,
      NOW,
    );
    expect(lines).toHaveLength(24);
    expect(lines.find((l) => l.selected)?.text).toMatch(/^vm39 /);
    // The operations keep their room below the table.
    expect(lines.map((l) => l.text)).toContain("OPERATIONS");
  });
});
