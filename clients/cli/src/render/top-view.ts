/**
 * What `banger top` shows, as plain lines computed from what the orchestrator answered: the capacity bars,
 * the VM table, the operations and the key line. The TUI library only draws these lines (and marks the
 * selected row); the plain snapshot (TERM=dumb, not a terminal) prints them as they are.
 */
import { OperationKind, OperationState, StageState, type Operation } from "@banger/gen/banger/v1/operation_pb.js";
import { AgentHealth, VmState, type Vm } from "@banger/gen/banger/v1/resources_pb.js";
import type { GetCapacityResponse } from "@banger/gen/banger/v1/system_pb.js";
import type { VmStatsResponse } from "@banger/gen/banger/v1/vm_pb.js";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { STATE_WORD, isEnded } from "./operation.js";

const MIB = 1024 * 1024;

/** Everything one refresh gathered. */
export interface TopData {
  readonly vms: readonly Vm[];
  /** VmStats of the running VMs, by name (a VM whose stats failed is missing). */
  readonly stats: ReadonlyMap<string, VmStatsResponse>;
  readonly capacity: GetCapacityResponse | undefined;
  /** Newest first. */
  readonly operations: readonly Operation[];
}

/** A VM holds its vCPUs and memory while its VMM may run (a paused one keeps its memory and its VMM). */
export function reservesHost(vm: Vm): boolean {
  return [VmState.RUNNING, VmState.STARTING, VmState.STOPPING, VmState.PAUSED].includes(vm.state);
}

export interface Usage {
  readonly label: string;
  readonly used: number;
  readonly total: number;
  /** "3/8 vCPU", "1.5G/15.6G", …: the numbers behind the bar. */
  readonly detail: string;
}

/**
 * The three bars: CPU and RAM reserved by the VMs that run against the host's, and the bytes the VMs' disk
 * files allocate against the size of the filesystem that holds banger's state (with what else uses it).
 */
export function capacityUsage(data: Pick<TopData, "vms" | "capacity">): Usage[] {
  const running = data.vms.filter(reservesHost);
  const vcpus = running.reduce((sum, vm) => sum + vm.vcpu, 0);
  const memory = running.reduce((sum, vm) => sum + vm.memoryMib * MIB, 0);
  const cap = data.capacity;
  const cpus = cap?.hostCpus ?? 0;
  const hostMemory = Number(cap?.hostMemoryBytes ?? 0n);
  const disk = Number(cap?.allocatedBytes ?? 0n);
  const fsSize = Number(cap?.stateFsSizeBytes ?? 0n);
  const fsUsed = Number(cap?.stateFsUsedBytes ?? 0n);
  return [
    { label: "CPU", used: vcpus, total: cpus, detail: `${vcpus}/${cpus} vCPU` },
    { label: "RAM", used: memory, total: hostMemory, detail: `${size(memory)}/${size(hostMemory)}` },
    {
      label: "DISK",
      used: disk,
      total: fsSize,
      detail: `${size(disk)}/${size(fsSize)} (fs ${size(fsUsed)} used)`,
    },
  ];
}

/** Percent of `used` in `total`, whole; 0 when the total is unknown. May pass 100 (overcommit). */
export function percent(used: number, total: number): number {
  return total > 0 ? Math.round((used / total) * 100) : 0;
}

/** Room kept right of the bars for the numbers, so that the three bars line up. */
const DETAIL_WIDTH = 30;

/** `CPU  [#####-----------]  38%  3/8 vCPU`, `width` columns at most. Overcommit fills the bar and says so. */
export function barLine(usage: Usage, width: number): string {
  const pct = percent(usage.used, usage.total);
  const tail = ` ${String(pct).padStart(3)}%  ${usage.detail}`;
  const barWidth = Math.max(10, width - 5 - 2 - 6 - DETAIL_WIDTH);
  const filled = usage.total > 0 ? Math.min(barWidth, Math.round((usage.used / usage.total) * barWidth)) : 0;
  return `${usage.label.padEnd(5)}[${"#".repeat(filled)}${"-".repeat(barWidth - filled)}]${tail}`.slice(0, width);
}

/** Bytes in binary units, short: `0`, `512K`, `340M`, `1.5G`, `2.0T`. */
export function size(bytes: number): string {
  if (bytes < 1024) return `${bytes}`;
  const units = ["K", "M", "G", "T", "P"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value >= 10 ? Math.round(value) : value.toFixed(1)}${units[unit]}`;
}

const HEALTH: Record<AgentHealth, string> = {
  [AgentHealth.UNSPECIFIED]: "-",
  [AgentHealth.OK]: "ok",
  [AgentHealth.UNREACHABLE]: "unreach",
  [AgentHealth.NONE]: "none",
};

/** The table's columns and their widths: 78 columns with the gaps, so the table fits 80. */
export const VM_COLUMNS = [
  ["NAME", 14],
  ["STATE", 8],
  ["HEALTH", 7],
  ["IP", 15],
  ["VCPU", 4],
  ["MEM", 5],
  ["CPU%", 5],
  ["RSS", 5],
  ["DISK", 5],
] as const;

/** One VM's cells, in VM_COLUMNS order; CPU% and RSS are "-" when it does not run (or has no stats yet). */
export function vmRow(vm: Vm, stats: VmStatsResponse | undefined, capacity: GetCapacityResponse | undefined): string[] {
  const allocation = capacity?.vms.find((a) => a.name === vm.name);
  const disk = allocation ? Number(allocation.rootDiskAllocatedBytes + allocation.workDiskAllocatedBytes) : undefined;
  return [
    vm.name,
    VmState[vm.state].toLowerCase(),
    HEALTH[vm.agentHealth],
    vm.guestIp,
    String(vm.vcpu),
    size(vm.memoryMib * MIB),
    stats ? stats.cpuPercent.toFixed(1) : "-",
    stats ? size(Number(stats.memoryRssBytes)) : "-",
    disk === undefined ? "-" : size(disk),
  ];
}

/** Cells padded (or cut, with "…") to their column's width and joined. */
export function tableLine(cells: readonly string[]): string {
  return VM_COLUMNS.map(([, width], i) => {
    const cell = cells[i] ?? "";
    return cell.length > width ? `${cell.slice(0, width - 1)}…` : cell.padEnd(width);
  })
    .join(" ")
    .trimEnd();
}

export const TABLE_HEADER = tableLine(VM_COLUMNS.map(([name]) => name));

const KIND_WORD: Record<OperationKind, string> = {
  [OperationKind.UNSPECIFIED]: "?",
  [OperationKind.CREATE_VM]: "create",
  [OperationKind.START_VM]: "start",
  [OperationKind.STOP_VM]: "stop",
  [OperationKind.RESTART_VM]: "restart",
  [OperationKind.DELETE_VM]: "delete",
  [OperationKind.PULL_IMAGE]: "pull",
  [OperationKind.PROMOTE_IMAGE]: "promote",
  [OperationKind.IMPORT_KERNEL]: "import",
  [OperationKind.BUILD_INITRAMFS]: "initramfs",
  [OperationKind.PREPARE_WORKSPACE]: "workspace",
  [OperationKind.SNAPSHOT_VM]: "snapshot",
};

/**
 * One operation in a line: `op-3f9a2c01b7de create  web  running  wait-ssh 9/12`; an ended one says how
 * long ago it ended and, when it failed, where.
 */
export function operationLine(op: Operation, now: Date): string {
  const head = `${op.id} ${KIND_WORD[op.kind].padEnd(8)} ${op.target.slice(0, 16).padEnd(16)} ${STATE_WORD[op.state].padEnd(9)}`;
  if (!isEnded(op)) {
    const index = op.stages.findIndex((s) => s.state === StageState.RUNNING);
    const stage = op.stages[index];
    const where = stage ? `${stage.name} ${index + 1}/${op.stages.length}` : "waiting";
    const bytes = stage?.progress && stage.progress.totalBytes > 0n ? ` ${percentOf(stage.progress)}%` : "";
    return `${head} ${where}${bytes}`;
  }
  const ago = op.endTime ? `${agoText(now.getTime() - timestampDate(op.endTime).getTime())} ago` : "";
  const failed = op.state === OperationState.SUCCEEDED ? "" : op.error?.stage ? ` at ${op.error.stage}` : "";
  return `${head} ${ago}${failed}`;
}

function percentOf(progress: { doneBytes: bigint; totalBytes: bigint }): number {
  return percent(Number(progress.doneBytes), Number(progress.totalBytes));
}

function agoText(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** The operations worth a line: every one that runs, then the most recent ended ones; `max` in all. */
export function operationsToShow(operations: readonly Operation[], max: number): Operation[] {
  const active = operations.filter((op) => !isEnded(op));
  const ended = operations.filter(isEnded);
  return [...active, ...ended].slice(0, Math.max(0, max));
}

export const KEYS_LINE = "↑↓ select  s start  x stop  r restart  d delete  l logs  e exec  c ssh  q quit";

/** The lines of the plain snapshot (TERM=dumb, or stdout not a terminal), each under 80 columns. */
export function snapshotText(data: TopData, now: Date, width = 80): string {
  const lines = [
    ...capacityUsage(data).map((usage) => barLine(usage, width)),
    "",
    TABLE_HEADER,
    ...data.vms.map((vm) => tableLine(vmRow(vm, data.stats.get(vm.name), data.capacity))),
    ...(data.vms.length === 0 ? ["(no VMs)"] : []),
    "",
    "OPERATIONS",
    ...operationsToShow(data.operations, 8).map((op) => operationLine(op, now).slice(0, width)),
    ...(data.operations.length === 0 ? ["(none)"] : []),
  ];
  return lines.join("\n") + "\n";
}

/** A line of the full screen; `selected` marks the VM row the keys act on. */
export interface ScreenLine {
  readonly text: string;
  readonly selected?: boolean;
  readonly dim?: boolean;
}

export interface ScreenState {
  /** Index of the selected VM in data.vms. */
  readonly selected: number;
  /** The status line: what a key did, a confirmation question, an error. */
  readonly status: string;
  readonly title: string;
}

/**
 * The whole screen in `rows` lines of at most `cols` columns: title, bars, the VM table (scrolled so the
 * selected VM is visible), the operations in what room is left (at least 3 lines when there are any), the
 * status line and the keys.
 */
export function screenLines(data: TopData, state: ScreenState, cols: number, rows: number, now: Date): ScreenLine[] {
  const cut = (text: string) => text.slice(0, cols);
  const bars = capacityUsage(data).map((usage) => ({ text: barLine(usage, cols) }));
  const top: ScreenLine[] = [{ text: cut(state.title) }, ...bars, { text: cut(TABLE_HEADER), dim: true }];
  const bottom: ScreenLine[] = [{ text: cut(state.status) }, { text: cut(KEYS_LINE), dim: true }];
  const room = Math.max(0, rows - top.length - bottom.length);
  const opsWanted = Math.min(operationsToShow(data.operations, 6).length, 6);
  const opsRoom = opsWanted === 0 ? 0 : Math.min(opsWanted + 1, Math.max(4, room - data.vms.length));
  const vmRoom = Math.max(1, room - opsRoom);
  const first = Math.min(Math.max(0, state.selected - vmRoom + 1), Math.max(0, data.vms.length - vmRoom));
  const vmLines: ScreenLine[] = data.vms.slice(first, first + vmRoom).map((vm, i) => ({
    text: cut(tableLine(vmRow(vm, data.stats.get(vm.name), data.capacity))),
    selected: first + i === state.selected,
  }));
  if (data.vms.length === 0) vmLines.push({ text: "(no VMs: banger vm create)", dim: true });
  const opLines: ScreenLine[] =
    opsRoom === 0
      ? []
      : [
          { text: "OPERATIONS", dim: true },
          ...operationsToShow(data.operations, opsRoom - 1).map((op) => ({ text: cut(operationLine(op, now)) })),
        ];
  const middle = [...vmLines];
  while (middle.length + opLines.length < room) middle.push({ text: "" });
  return [...top, ...middle, ...opLines, ...bottom].slice(0, rows);
}
