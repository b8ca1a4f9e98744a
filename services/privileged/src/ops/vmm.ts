/**
 * A VM's VMM process: launched as the owner (never root), detached from the
 * helper, with an argument vector the helper builds itself from validated
 * fields; signalled only after the pid is proved to be that VM's VMM (start
 * time, command line and uid all match).
 *
 * Everything a launch touches lives under `<runtimeDir>/vms/<vm_id>/`, and
 * every step below the runtime directory goes through an open directory
 * (`/proc/self/fd/<dir>/<name>`, the openat of Node): a directory or symlink
 * swapped in by the owner while the helper works cannot redirect a mkdir, a
 * chown or a create to somewhere else.
 *
 * The VMM's output never goes straight to a file: its stdout (the guest
 * console) and stderr (its own log) are pipes, each read by a log relay
 * started beside it, detached and as the owner, that keeps the newest output
 * in `console.log` / `vmm.log` plus one predecessor (`.1`), the two within the
 * VM's log cap. A guest printing without end cannot fill the runtime
 * directory (a tmpfs).
 */
import { closeSync, constants, fchownSync, openSync, type Stats } from "node:fs";
import { lstat, mkdir, open, readdir, rmdir, unlink, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  DeadlineExceededError,
  FailedPreconditionError,
  HostCommandError,
  InvalidArgumentError,
  PermissionDeniedError,
  checkSocketPathLength,
  createHostRunner,
  type Runner,
} from "@banger/common";
import type { HelperConfig } from "../config.js";
import { probeHostFeatures } from "../host/features.js";
import {
  CLK_TCK,
  DEFAULT_PROC_ROOT,
  cpuKhz,
  dateToStartTime,
  isPid,
  listPids,
  readCmdline,
  readCredentials,
  readRssBytes,
  readStat,
  spawnDetached,
  startTimeToDate,
  type DetachedProcess,
  type ProcStat,
  type SpawnDetached,
} from "../host/proc.js";
import { nonBlockingWriterPipe } from "../host/pipe.js";
import { snapshotName, tapName, validVmId } from "../validate/ids.js";
import { confinedPath } from "../validate/paths.js";

export type VmmKind = "firecracker" | "qemu-microvm";

/** The machine QEMU is started with (vmm.proto `QemuMachine`). */
export interface QemuMachine {
  /** 1–32. */
  vcpu: number;
  /** 128–262144. */
  memoryMib: number;
  /** Inside the state directory. */
  kernelPath: string;
  /** Inside the state directory; "" = none. */
  initrdPath: string;
  /** Printable ASCII, ≤ 2048 bytes, no `"`. */
  bootArgs: string;
  /** Inside the state directory, or the VM's own dm-snapshot node `/dev/mapper/bgr-<vm_id>-root`. */
  rootDisk: string;
  /** Inside the state directory. */
  workDisk: string;
  /** Lowercase, colon-separated, unicast. */
  mac: string;
  /** KVM (refused with KVM_ABSENT where /dev/kvm is not usable) or TCG. */
  kvm: boolean;
  /** tsc_early_khz under TCG; 0 = the host's, measured by the helper. */
  tscKhz: number;
}

export interface VmmProcessInfo {
  vmId: string;
  pid: number;
  /** Clock ticks since boot (/proc/<pid>/stat field 22). */
  startTime: bigint;
  kind: VmmKind;
  /** Real uid of the process. */
  uid: number;
}

export interface LaunchResult {
  pid: number;
  /** Clock ticks since boot (/proc/<pid>/stat field 22); `vmmStartDate` turns it into a Date. */
  startTime: bigint;
  /** Firecracker's API socket or QEMU's QMP socket. */
  controlSocket: string;
  logPath: string;
  consolePath: string;
}

export type VmmSignal = "TERM" | "KILL";

/** What GetVmm answers. */
export interface VmmState {
  readonly running: boolean;
  /** CPU time used, user + system. */
  readonly cpuTimeMs: number;
  readonly rssBytes: number;
}

const NOT_RUNNING: VmmState = { running: false, cpuTimeMs: 0, rssBytes: 0 };

export interface VmmOps {
  launch(req: {
    vmId: string;
    kind: VmmKind;
    qemu?: QemuMachine | undefined;
    /** Bytes kept per log (current + predecessor); 0 or absent = DEFAULT_LOG_MAX_BYTES. */
    logMaxBytes?: number | bigint | undefined;
  }): Promise<LaunchResult>;
  signal(req: { vmId: string; pid: number; startTime: bigint; signal: VmmSignal }): Promise<{ existed: boolean }>;
  /** Whether that pid is still the VM's VMM (proved as for signal), and its CPU time and memory. */
  get(req: { vmId: string; pid: number; startTime: bigint }): Promise<VmmState>;
  list(): Promise<VmmProcessInfo[]>;
  /** Removes `<runtime>/vms/<vm_id>/` once the VM's VMM is gone. */
  removeFiles(req: { vmId: string }): Promise<{ existed: boolean }>;
}

export interface VmmDeps {
  readonly config: HelperConfig;
  /** Where /proc is (tests hand in a crafted one). */
  readonly procRoot?: string;
  /** How the VMM is started (default: a detached spawn as the owner). */
  readonly spawnProcess?: SpawnDetached;
  /** Whether the owner's VMM can use /dev/kvm (default: the host feature probe). */
  readonly kvmUsable?: () => boolean;
  /** The host's TSC frequency for TCG guests (default: /proc/cpuinfo). */
  readonly hostTscKhz?: () => number | undefined;
  /** Runs host tools (default: common's host runner); the owner's `kill` when the helper may not signal. */
  readonly runner?: Runner;
  /** How long a new VMM has to create its control socket (default 10 s). */
  readonly readyTimeoutMs?: number;
}

/** Every path of one VM's runtime directory; nobody joins these by hand. */
export interface VmRuntimePaths {
  /** `<runtimeDir>/vms` */
  readonly vmsDir: string;
  /** `<runtimeDir>/vms/<vm_id>` */
  readonly dir: string;
  readonly firecrackerSocket: string;
  readonly qmpSocket: string;
  /** QEMU: the guest agent's virtio-serial port (banger's guest kit runs qemu-ga on the other end). */
  readonly agentSocket: string;
  readonly vmmLog: string;
  readonly consoleLog: string;
}

const FIRECRACKER_SOCKET = "firecracker.sock";
const QMP_SOCKET = "qmp.sock";
const AGENT_SOCKET = "agent.sock";
const VMM_LOG = "vmm.log";
const CONSOLE_LOG = "console.log";

/** What a VM's console and its VMM's log each keep at most, current file and predecessor together. */
export const DEFAULT_LOG_MAX_BYTES = 8 * 1024 * 1024;
export const MIN_LOG_MAX_BYTES = 128 * 1024;
export const MAX_LOG_MAX_BYTES = 1024 * 1024 * 1024;

/** The static busybox (Debian's busybox-static; banger's initramfs needs it too) the log relays run on. */
export const RELAY_BUSYBOX = "/bin/busybox";
const RELAY_NAME = "banger-log-relay";
/**
 * A log relay: `$2` in its working directory (the VM's) gets at most `$3` bytes of stdin, then
 * becomes `$2.1` and a new `$2` begins; it ends when stdin does (the VMM is gone). busybox dd with
 * count_bytes reads exactly what it writes (no output lost at a rotation) and writes each read at
 * once (a prompt without a newline shows). Whatever is at `$2` when it starts (an earlier run's
 * output, or anything the owner put there) becomes the predecessor, never written through. A
 * failed write (the tmpfs full) drops that block and retries a second later with a new file.
 */
const RELAY_SCRIPT = [
  `umask 022; b=${RELAY_BUSYBOX} f=$2 half=$3`,
  `if [ -e "$f" ] || [ -L "$f" ]; then $b mv -f "$f" "$f.1"; fi`,
  `while :; do`,
  `  $b dd bs=65536 count="$half" iflag=count_bytes of="$f" 2>/dev/null`,
  `  rc=$?`,
  `  size=$($b stat -c %s "$f" 2>/dev/null || echo 0)`,
  `  [ "$rc" = 0 ] && [ "$size" -lt "$half" ] && exit 0`,
  `  [ "$rc" = 0 ] || $b sleep 1`,
  `  $b mv -f "$f" "$f.1"`,
  `done`,
].join("\n");

/** The argv of the relay that writes `file` of VM `vmId`, keeping `maxBytes` in all. */
export function relayArgv(vmId: string, file: string, maxBytes: number): string[] {
  return [RELAY_BUSYBOX, "sh", "-c", RELAY_SCRIPT, RELAY_NAME, vmId, file, String(Math.floor(maxBytes / 2))];
}

/** Which VM a command line is the log relay of, if it is exactly one. */
function relayOf(cmdline: readonly string[]): string | undefined {
  const [bin, sh, c, script, name, vmId, file, half] = cmdline;
  if (bin !== RELAY_BUSYBOX || sh !== "sh" || c !== "-c" || script !== RELAY_SCRIPT || name !== RELAY_NAME) {
    return undefined;
  }
  if (cmdline.length !== 8 || (file !== CONSOLE_LOG && file !== VMM_LOG) || !/^\d+$/.test(half ?? "")) return undefined;
  return vmId !== undefined && isVmId(vmId) ? vmId : undefined;
}

export function vmRuntimePaths(runtimeDir: string, vmId: string): VmRuntimePaths {
  const vmsDir = join(runtimeDir, "vms");
  const dir = join(vmsDir, validVmId(vmId));
  return {
    vmsDir,
    dir,
    firecrackerSocket: join(dir, FIRECRACKER_SOCKET),
    qmpSocket: join(dir, QMP_SOCKET),
    agentSocket: join(dir, AGENT_SOCKET),
    vmmLog: join(dir, VMM_LOG),
    consoleLog: join(dir, CONSOLE_LOG),
  };
}

function controlSocketOf(paths: VmRuntimePaths, kind: VmmKind): string {
  return kind === "firecracker" ? paths.firecrackerSocket : paths.qmpSocket;
}

/** The VMM's stderr as a path it can open (Firecracker opens its log itself). */
const VMM_STDERR = "/proc/self/fd/2";

/** Firecracker's argv: only its API socket, id and log; the orchestrator configures the rest over the API. */
export function firecrackerArgv(config: HelperConfig, vmId: string): string[] {
  const paths = vmRuntimePaths(config.runtimeDir, vmId);
  return [
    config.firecrackerBin,
    "--api-sock",
    paths.firecrackerSocket,
    "--id",
    vmId,
    // Its stderr: the pipe to the VM's log relay.
    "--log-path",
    VMM_STDERR,
    "--level",
    "Info",
  ];
}

const QMP_OPTIONS = ",server=on,wait=off";
const NETDEV_ID = "net0";

function qmpValue(paths: VmRuntimePaths): string {
  return `unix:${paths.qmpSocket}${QMP_OPTIONS}`;
}

/**
 * The guest agent's channel: a virtio-serial port named as qemu-ga expects, backed by a socket QEMU
 * listens on in the VM's runtime directory (one client at a time; the orchestrator speaks QGA to it).
 */
function agentChardev(paths: VmRuntimePaths): string {
  return `socket,id=agent0,path=${paths.agentSocket},server=on,wait=off`;
}
const AGENT_PORT = "virtserialport,chardev=agent0,name=org.qemu.guest_agent.0";

/** The guest's serial console on QEMU's stdout, the pipe to the VM's console relay. */
const SERIAL = "stdio";

function netdevPrefix(vmId: string): string {
  return `tap,id=${NETDEV_ID},ifname=${tapName(vmId)},`;
}

/**
 * QEMU's argv for a validated machine: `-M microvm`, the kernel, initrd and
 * command line, the two disks as raw virtio-blk (never probed), the VM's tap,
 * QMP, the guest agent's virtio-serial port and the serial console under the
 * VM's runtime directory.
 * `tscKhz` is the resolved value (the request's, or the host's when it asked for 0).
 */
export function qemuArgv(
  config: HelperConfig,
  vmId: string,
  machine: QemuMachine,
  tscKhz: number | undefined,
): string[] {
  const paths = vmRuntimePaths(config.runtimeDir, vmId);
  return [
    config.qemuBin,
    "-M",
    "microvm,x-option-roms=off",
    "-accel",
    // split-wx: TCG's code buffer mapped twice (writable, and executable) instead of writable-executable,
    // so QEMU runs under the helper unit's MemoryDenyWriteExecute=yes, which its children inherit.
    machine.kvm ? "kvm" : "tcg,split-wx=on",
    "-cpu",
    machine.kvm ? "host" : "max",
    "-smp",
    String(machine.vcpu),
    "-m",
    `${machine.memoryMib}M`,
    "-kernel",
    machine.kernelPath,
    ...(machine.initrdPath === "" ? [] : ["-initrd", machine.initrdPath]),
    "-append",
    kernelCommandLine(machine, tscKhz),
    "-drive",
    `id=root,file=${machine.rootDisk},format=raw,if=none`,
    "-device",
    "virtio-blk-device,drive=root",
    "-drive",
    `id=work,file=${machine.workDisk},format=raw,if=none`,
    "-device",
    "virtio-blk-device,drive=work",
    "-netdev",
    `${netdevPrefix(vmId)}script=no,downscript=no`,
    "-device",
    `virtio-net-device,netdev=${NETDEV_ID},mac=${machine.mac}`,
    "-device",
    "virtio-serial-device",
    "-chardev",
    agentChardev(paths),
    "-device",
    AGENT_PORT,
    "-qmp",
    qmpValue(paths),
    "-serial",
    SERIAL,
    "-nographic",
    "-nodefaults",
    "-no-user-config",
    "-no-reboot",
  ];
}

/** Linux x86 COMMAND_LINE_SIZE - 1. */
const MAX_BOOT_ARGS_BYTES = 2048;

function kernelCommandLine(machine: QemuMachine, tscKhz: number | undefined): string {
  // Under TCG a guest calibrating its TSC hangs about one boot in four: hand it the frequency.
  if (machine.kvm || tscKhz === undefined || /(^| )tsc_early_khz=/.test(machine.bootArgs)) return machine.bootArgs;
  const param = `tsc_early_khz=${tscKhz}`;
  return machine.bootArgs === "" ? param : `${machine.bootArgs} ${param}`;
}

/** A start time (ticks since boot) as the wall-clock time the rpc layer sends as a Timestamp. */
export function vmmStartDate(startTime: bigint, procRoot = DEFAULT_PROC_ROOT): Date {
  return startTimeToDate(startTime, procRoot);
}

/** The inverse of `vmmStartDate`, for a Timestamp received in SignalVmm. */
export function vmmStartTimeFromDate(date: Date, procRoot = DEFAULT_PROC_ROOT): bigint {
  return dateToStartTime(date, procRoot);
}

// ---------------------------------------------------------------- validation

function isVmId(value: string): boolean {
  try {
    validVmId(value);
    return true;
  } catch {
    return false;
  }
}

function validKind(kind: unknown): VmmKind {
  if (kind !== "firecracker" && kind !== "qemu-microvm") {
    throw new InvalidArgumentError(`kind must be firecracker or qemu-microvm`, { reason: "INVALID_VMM_KIND" });
  }
  return kind;
}

function integerIn(value: unknown, min: number, max: number, field: string, reason: string): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`${field} must be an integer from ${min} to ${max}`, { reason });
  }
  return value;
}

/** A file QEMU opens: inside the state directory (text check), and no `,` (QEMU's option separator). */
function machinePath(stateDir: string, value: unknown, field: string): string {
  if (typeof value !== "string") {
    throw new InvalidArgumentError(`${field} must be a path`, { reason: "INVALID_PATH" });
  }
  const path = confinedPath(stateDir, value, field);
  if (path.includes(",")) {
    throw new InvalidArgumentError(`${field} must not contain ","`, { reason: "INVALID_PATH" });
  }
  return path;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function validMac(value: unknown): string {
  if (typeof value !== "string" || !MAC.test(value)) {
    throw new InvalidArgumentError("qemu.mac must be six lowercase hex pairs separated by ':'", {
      reason: "INVALID_MAC",
    });
  }
  const first = parseInt(value.slice(0, 2), 16);
  if ((first & 1) !== 0 || value === "00:00:00:00:00:00") {
    throw new InvalidArgumentError("qemu.mac must be a unicast address", { reason: "INVALID_MAC" });
  }
  return value;
}

function validBootArgs(value: unknown): string {
  if (
    typeof value !== "string" ||
    !/^[\x20-\x7e]*$/.test(value) ||
    value.includes('"') ||
    value.length > MAX_BOOT_ARGS_BYTES
  ) {
    throw new InvalidArgumentError(
      `qemu.boot_args must be printable ASCII without '"', at most ${MAX_BOOT_ARGS_BYTES} bytes`,
      { reason: "INVALID_BOOT_ARGS" },
    );
  }
  return value;
}

/** Every field of a QEMU machine against its rule (vmm.proto); touches nothing. */
export function validQemuMachine(stateDir: string, vmId: string, machine: unknown): QemuMachine {
  if (typeof machine !== "object" || machine === null) {
    throw new InvalidArgumentError("qemu is required for a qemu-microvm VMM", { reason: "QEMU_MACHINE_REQUIRED" });
  }
  const m = machine as Partial<Record<keyof QemuMachine, unknown>>;
  if (typeof m.kvm !== "boolean") {
    throw new InvalidArgumentError("qemu.kvm must be a boolean", { reason: "INVALID_ACCELERATOR" });
  }
  const dmNode = `/dev/mapper/${snapshotName(vmId)}`;
  return {
    vcpu: integerIn(m.vcpu, 1, 32, "qemu.vcpu", "INVALID_VCPU"),
    memoryMib: integerIn(m.memoryMib, 128, 262_144, "qemu.memory_mib", "INVALID_MEMORY"),
    kernelPath: machinePath(stateDir, m.kernelPath, "qemu.kernel_path"),
    initrdPath: m.initrdPath === "" ? "" : machinePath(stateDir, m.initrdPath, "qemu.initrd_path"),
    bootArgs: validBootArgs(m.bootArgs),
    rootDisk: m.rootDisk === dmNode ? dmNode : machinePath(stateDir, m.rootDisk, "qemu.root_disk"),
    workDisk: machinePath(stateDir, m.workDisk, "qemu.work_disk"),
    mac: validMac(m.mac),
    kvm: m.kvm,
    tscKhz: integerIn(m.tscKhz, 0, 10_000_000, "qemu.tsc_khz", "INVALID_TSC_KHZ"),
  };
}

/** LaunchVmm's log_max_bytes: 0 (or absent) = the default, else within the bounds. */
export function validLogMaxBytes(value: unknown): number {
  if (value === undefined || value === 0 || value === 0n) return DEFAULT_LOG_MAX_BYTES;
  const n = typeof value === "bigint" && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  return integerIn(n, MIN_LOG_MAX_BYTES, MAX_LOG_MAX_BYTES, "log_max_bytes", "INVALID_LOG_MAX_BYTES");
}

function validPid(pid: unknown): number {
  if (typeof pid !== "number" || !isPid(pid) || pid <= 1) {
    throw new InvalidArgumentError("pid must be a process id greater than 1", { reason: "INVALID_PID" });
  }
  return pid;
}

function validStartTime(startTime: unknown): bigint {
  if (typeof startTime !== "bigint" || startTime < 0n) {
    throw new InvalidArgumentError("start_time must be the one LaunchVmm returned", {
      reason: "INVALID_START_TIME",
    });
  }
  return startTime;
}

function validSignal(signal: unknown): NodeJS.Signals {
  if (signal === "TERM") return "SIGTERM";
  if (signal === "KILL") return "SIGKILL";
  throw new InvalidArgumentError("signal must be TERM or KILL", { reason: "INVALID_SIGNAL" });
}

// ------------------------------------------------------------ identification

/** Which VM's VMM an argument vector is, if it is exactly one the helper builds. */
function identifyArgv(config: HelperConfig, argv: readonly string[]): { vmId: string; kind: VmmKind } | undefined {
  const vmsPrefix = `${join(config.runtimeDir, "vms")}/`;
  if (argv[0] === config.firecrackerBin && argv[3] === "--id") {
    const vmId = argv[4] ?? "";
    if (isVmId(vmId) && sameArgv(argv, firecrackerArgv(config, vmId))) return { vmId, kind: "firecracker" };
  }
  if (argv[0] === config.qemuBin) {
    const qmp = valueAfter(argv, "-qmp") ?? "";
    const head = `unix:${vmsPrefix}`;
    const tail = `/${QMP_SOCKET}${QMP_OPTIONS}`;
    if (!qmp.startsWith(head) || !qmp.endsWith(tail)) return undefined;
    const vmId = qmp.slice(head.length, qmp.length - tail.length);
    if (!isVmId(vmId)) return undefined;
    // The agent's chardev, when there is one (a VMM started before the guest kit has none), is this VM's too.
    const chardev = valueAfter(argv, "-chardev");
    if (
      valueAfter(argv, "-serial") === SERIAL &&
      valueAfter(argv, "-netdev")?.startsWith(netdevPrefix(vmId)) === true &&
      (chardev === undefined || chardev === agentChardev(vmRuntimePaths(config.runtimeDir, vmId)))
    ) {
      return { vmId, kind: "qemu-microvm" };
    }
  }
  return undefined;
}

/**
 * A process's command line as the VMM argv it was started with. A VMM that is
 * a `#!` script (the tests' fake) shows its interpreter first, then exactly
 * the argv the helper passed.
 */
function identifyCmdline(config: HelperConfig, cmdline: readonly string[]) {
  return identifyArgv(config, cmdline) ?? (cmdline.length > 1 ? identifyArgv(config, cmdline.slice(1)) : undefined);
}

function valueAfter(argv: readonly string[], flag: string): string | undefined {
  const index = argv.indexOf(flag);
  return index < 0 ? undefined : argv[index + 1];
}

function sameArgv(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}

// ------------------------------------------------------- the VM's directory

/** `name` inside an open directory: the kernel resolves the directory from the fd, not from a path. */
function at(dir: FileHandle, name: string): string {
  return `/proc/self/fd/${dir.fd}/${name}`;
}

function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

/** Opens (making it if absent) the directory `name` inside `parent`; a symlink or non-directory is refused. */
async function openOrMakeDir(
  parent: FileHandle,
  name: string,
  mode: number,
  shownPath: string,
): Promise<{ dir: FileHandle; made: boolean }> {
  let made = false;
  try {
    await mkdir(at(parent, name), { mode });
    made = true;
  } catch (error) {
    if (errnoOf(error) !== "EEXIST") throw error;
  }
  let dir: FileHandle;
  try {
    dir = await open(at(parent, name), DIR_FLAGS);
  } catch (error) {
    const code = errnoOf(error);
    if (code === "ELOOP" || code === "ENOTDIR") {
      throw new FailedPreconditionError(`${shownPath} is not a directory`, {
        reason: "RUNTIME_DIR_UNSAFE",
        cause: error,
      });
    }
    throw error;
  }
  return { dir, made };
}

/** `<runtime>/vms` must be root's and writable by no one else: the VM directories' entries are then root's to change. */
async function checkRootsDir(dir: FileHandle, shownPath: string): Promise<void> {
  const stats = await dir.stat();
  if (stats.uid !== 0 || (stats.mode & 0o022) !== 0) {
    throw new FailedPreconditionError(`${shownPath} must be root's and writable by no one else`, {
      reason: "RUNTIME_DIR_UNSAFE",
    });
  }
}

async function openRuntimeDir(runtimeDir: string): Promise<FileHandle> {
  try {
    return await open(runtimeDir, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (error) {
    throw new FailedPreconditionError(`runtime directory ${runtimeDir} is not usable`, {
      reason: "RUNTIME_DIR_ABSENT",
      cause: error,
    });
  }
}

/** Removes what a dead VMM left at its socket path (Firecracker refuses to start over a stale socket). */
async function clearSocketPath(vmDir: FileHandle, name: string, shownPath: string): Promise<void> {
  let stats: Stats;
  try {
    stats = await lstat(at(vmDir, name));
  } catch (error) {
    if (errnoOf(error) === "ENOENT") return;
    throw error;
  }
  if (stats.isDirectory()) {
    throw new FailedPreconditionError(`${shownPath} is a directory`, { reason: "SOCKET_PATH_OCCUPIED" });
  }
  await unlink(at(vmDir, name));
}

/**
 * The last lines of a log the relay wrote (for an error message). Opened in the open VM directory
 * without following a symlink or blocking on a FIFO, and read only if it is a regular file of the owner's.
 */
async function logTail(vmDir: FileHandle, name: string, ownerUid: number, bytes = 2048): Promise<string> {
  let handle: FileHandle;
  try {
    handle = await open(at(vmDir, name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return "";
  }
  try {
    const stats = await handle.stat();
    if (!stats.isFile() || stats.uid !== ownerUid) return "";
    const size = stats.size;
    const length = Math.min(size, bytes);
    if (length === 0) return "";
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, size - length);
    return buffer.toString("utf8").trimEnd().split("\n").slice(-5).join("\n");
  } finally {
    await handle.close();
  }
}

/** How many times a VM directory the owner keeps filling is emptied before RemoveVmmFiles gives up. */
const EMPTY_TRIES = 3;

/**
 * Removes `<vms>/<vm_id>` (`vms` is root's, so the entry itself cannot be swapped). Below it every
 * entry is the owner's to rename at any moment, so root never walks it: the owner empties it (`find
 * -delete` as the owner, started on the open directory, so its races can only reach what the owner
 * may delete anyway), then root removes the empty directory by its entry in `vms`. One that root made
 * and never handed over holds nothing the owner could have put there.
 */
async function removeVmDir(
  vms: FileHandle,
  vmId: string,
  owner: { uid: number; gid: number },
  runner: Runner,
  shownPath: string,
): Promise<{ existed: boolean }> {
  const entry = at(vms, vmId);
  const stats = await lstat(entry).catch((error: unknown) => {
    if (errnoOf(error) === "ENOENT") return undefined;
    throw error;
  });
  if (!stats) return { existed: false };
  if (!stats.isDirectory()) {
    // A symlink (or anything else) in place of the directory: the entry goes, never what it names.
    await unlink(entry);
    return { existed: true };
  }
  for (let attempt = 1; ; attempt++) {
    const dir = await open(entry, DIR_FLAGS);
    try {
      const mine = await dir.stat();
      if (mine.uid === owner.uid) {
        await runner.run(["find", "-H", "/proc/self/fd/3", "-mindepth", "1", "-delete"], {
          as: owner,
          fds: [dir.fd],
          okCodes: [0, 1],
        });
      } else if (mine.uid === 0 && (mine.mode & 0o022) === 0) {
        for (const name of await readdir(at(dir, ""))) await unlink(at(dir, name));
      } else {
        throw new FailedPreconditionError(`${shownPath} belongs to uid ${mine.uid}, not the owner`, {
          reason: "RUNTIME_DIR_UNSAFE",
        });
      }
    } finally {
      await dir.close();
    }
    try {
      await rmdir(entry);
      return { existed: true };
    } catch (error) {
      if (errnoOf(error) !== "ENOTEMPTY" || attempt >= EMPTY_TRIES) {
        throw new FailedPreconditionError(`${shownPath} cannot be removed: ${(error as Error).message}`, {
          reason: "VMM_FILES_BUSY",
          cause: error,
        });
      }
    }
  }
}

// ------------------------------------------------------------------- the ops

const VMM_ENV = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" } as const;

export function createVmmOps(deps: VmmDeps): VmmOps {
  const { config } = deps;
  const procRoot = deps.procRoot ?? DEFAULT_PROC_ROOT;
  const spawnProcess = deps.spawnProcess ?? spawnDetached;
  const kvmUsable = deps.kvmUsable ?? (() => probeHostFeatures().kvm);
  const hostTscKhz = deps.hostTscKhz ?? (() => cpuKhz(procRoot));
  const readyTimeoutMs = deps.readyTimeoutMs ?? 10_000;
  const runner = deps.runner ?? createHostRunner();
  /** VMs whose launch is under way in this helper (between the running check and the spawn). */
  const launching = new Set<string>();

  /** The VMM identity of `pid`, read so that a pid reused mid-read is not mistaken for it. */
  async function inspect(
    pid: number,
  ): Promise<
    { gone: true } | { gone: false; stat: ProcStat; vmm: { vmId: string; kind: VmmKind } | undefined; uid: number }
  > {
    const stat = await readStat(pid, procRoot);
    const cmdline = await readCmdline(pid, procRoot);
    const credentials = await readCredentials(pid, procRoot);
    const again = await readStat(pid, procRoot);
    if (!stat || !cmdline || !credentials || !again || again.startTime !== stat.startTime) return { gone: true };
    return { gone: false, stat, vmm: identifyCmdline(config, cmdline), uid: credentials.uid.real };
  }

  async function list(): Promise<VmmProcessInfo[]> {
    const found: VmmProcessInfo[] = [];
    for (const pid of await listPids(procRoot)) {
      // Cheap filter first: only processes whose command line is a VMM argv get a full look.
      const cmdline = await readCmdline(pid, procRoot);
      if (!cmdline || !identifyCmdline(config, cmdline)) continue;
      const seen = await inspect(pid);
      if (seen.gone || !seen.vmm) continue;
      found.push({ vmId: seen.vmm.vmId, pid, startTime: seen.stat.startTime, kind: seen.vmm.kind, uid: seen.uid });
    }
    return found;
  }

  /** The log relays of a VM (proved by their exact command line and the owner's uid). */
  async function relaysOf(vmId: string): Promise<number[]> {
    const found: number[] = [];
    for (const pid of await listPids(procRoot)) {
      const cmdline = await readCmdline(pid, procRoot);
      if (!cmdline || relayOf(cmdline) !== vmId) continue;
      const credentials = await readCredentials(pid, procRoot);
      if (credentials?.uid.real === config.ownerUid) found.push(pid);
    }
    return found;
  }

  /**
   * Ends the VM's log relays (each leads its own process group: its dd goes with it). A relay ends
   * by itself when its VMM does; one still there holds a pipe the owner kept open, or is finishing.
   */
  async function stopRelays(vmId: string): Promise<void> {
    for (let round = 0; round < 50; round++) {
      const pids = await relaysOf(vmId);
      if (pids.length === 0) return;
      for (const pid of pids) {
        try {
          process.kill(-pid, "SIGKILL");
        } catch (error) {
          if (errnoOf(error) === "EPERM") {
            // Root without CAP_KILL (the helper's unit): the owner may signal its own processes.
            await runner.run(["kill", "-s", "KILL", "--", `-${pid}`], {
              as: { uid: config.ownerUid, gid: config.ownerGid },
              okCodes: [0, 1],
            });
          }
        }
      }
      await sleep(20);
    }
    throw new FailedPreconditionError(`the log relays of VM ${vmId} do not stop`, { reason: "VMM_FILES_BUSY" });
  }

  async function waitForSocket(
    vmDir: FileHandle,
    name: string,
    child: DetachedProcess,
    tails: () => Promise<string>,
  ): Promise<void> {
    let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    void child.exited.then((result) => (exited = result));
    const deadline = Date.now() + readyTimeoutMs;
    for (;;) {
      try {
        if ((await lstat(at(vmDir, name))).isSocket()) return;
      } catch (error) {
        if (errnoOf(error) !== "ENOENT") throw error;
      }
      if (exited) {
        const how = exited.signal ?? `code ${exited.code}`;
        const tail = await tails();
        throw new FailedPreconditionError(
          `the VMM exited (${how}) before it opened its socket${tail ? `: ${tail}` : ""}`,
          {
            reason: "VMM_EXITED",
          },
        );
      }
      if (Date.now() > deadline) {
        // Still our unreaped child (no exit seen), so the pid is certainly the one we started.
        try {
          process.kill(child.pid, "SIGKILL");
        } catch {
          // already gone
        }
        throw new DeadlineExceededError(`the VMM did not open its socket within ${readyTimeoutMs} ms`, {
          reason: "VMM_NOT_READY",
        });
      }
      await sleep(20);
    }
  }

  return {
    async launch(req) {
      // Everything is checked before anything happens.
      const vmId = validVmId(req.vmId);
      const kind = validKind(req.kind);
      const paths = vmRuntimePaths(config.runtimeDir, vmId);
      const controlSocket = controlSocketOf(paths, kind);
      checkSocketPathLength(controlSocket);
      const logMaxBytes = validLogMaxBytes(req.logMaxBytes);
      let argv: string[];
      if (kind === "firecracker") {
        argv = firecrackerArgv(config, vmId);
      } else {
        const machine = validQemuMachine(config.stateDir, vmId, req.qemu);
        const tscKhz = machine.kvm ? undefined : machine.tscKhz === 0 ? hostTscKhz() : machine.tscKhz;
        if (Buffer.byteLength(kernelCommandLine(machine, tscKhz)) > MAX_BOOT_ARGS_BYTES) {
          throw new InvalidArgumentError(
            `qemu.boot_args with tsc_early_khz appended exceed ${MAX_BOOT_ARGS_BYTES} bytes`,
            { reason: "INVALID_BOOT_ARGS" },
          );
        }
        if (paths.dir.includes(",")) {
          throw new FailedPreconditionError(
            `runtime directory ${config.runtimeDir} contains ",", which QEMU cannot take`,
            {
              reason: "RUNTIME_DIR_UNSUPPORTED",
            },
          );
        }
        if (machine.kvm && !kvmUsable()) {
          throw new FailedPreconditionError("/dev/kvm is not usable on this host; ask for TCG (kvm = false)", {
            reason: "KVM_ABSENT",
          });
        }
        argv = qemuArgv(config, vmId, machine, tscKhz);
      }
      if (config.ownerUid === 0 || config.ownerGid === 0) {
        throw new FailedPreconditionError("the helper's owner is root; a VMM never runs as root", {
          reason: "OWNER_IS_ROOT",
        });
      }

      if (launching.has(vmId)) {
        throw new FailedPreconditionError(`a VMM for ${vmId} is being launched`, { reason: "VMM_RUNNING" });
      }
      launching.add(vmId);
      const handles: FileHandle[] = [];
      const keep = <T extends FileHandle>(handle: T): T => {
        handles.push(handle);
        return handle;
      };
      try {
        const running = (await list()).find((p) => p.vmId === vmId);
        if (running) {
          throw new FailedPreconditionError(`VM ${vmId} already has a running VMM (pid ${running.pid})`, {
            reason: "VMM_RUNNING",
          });
        }

        const owner = { uid: config.ownerUid, gid: config.ownerGid };
        const runtime = keep(await openRuntimeDir(config.runtimeDir));
        const vms = await openOrMakeDir(runtime, "vms", 0o711, paths.vmsDir);
        keep(vms.dir);
        if (vms.made) await vms.dir.chmod(0o711); // whatever the umask: the owner must reach its VM's directory
        await checkRootsDir(vms.dir, paths.vmsDir);
        const vm = keep((await openOrMakeDir(vms.dir, vmId, 0o700, paths.dir)).dir);
        // The owner's, group root, 0770: the VMM (the owner) and the helper (gid 0) both work in it, and
        // the installed helper needs no CAP_DAC_OVERRIDE or CAP_FOWNER for that. Mode first, while root
        // still owns it (without CAP_FOWNER it cannot chmod the owner's). One already handed over (an
        // earlier launch) must be exactly that.
        const before = await vm.stat();
        if (before.uid === 0) {
          await vm.chmod(0o770);
          await vm.chown(owner.uid, 0);
        } else if (before.uid !== owner.uid || before.gid !== 0 || (before.mode & 0o777) !== 0o770) {
          throw new FailedPreconditionError(`${paths.dir} is not the owner's directory (group root, 0770)`, {
            reason: "RUNTIME_DIR_UNSAFE",
          });
        }

        const socketName = kind === "firecracker" ? FIRECRACKER_SOCKET : QMP_SOCKET;
        await clearSocketPath(vm, socketName, controlSocket);
        // The VMM writes into pipes; a relay per log, as the owner, keeps the newest output in files.
        await stopRelays(vmId);
        const pipes: number[] = [];
        const closePipes = () => pipes.splice(0).forEach((fd) => closeSync(fd));
        let child: DetachedProcess;
        let relays: DetachedProcess[];
        try {
          const consolePipe = nonBlockingWriterPipe();
          pipes.push(consolePipe.read, consolePipe.write);
          const logPipe = nonBlockingWriterPipe();
          pipes.push(logPipe.read, logPipe.write);
          // A pipe is its maker's, 0600: the owner's, so the VMM can open its stderr by path (Firecracker's log).
          fchownSync(consolePipe.write, owner.uid, owner.gid);
          fchownSync(logPipe.write, owner.uid, owner.gid);
          const devNull = openSync("/dev/null", "w");
          pipes.push(devNull);
          relays = [];
          for (const [file, pipe] of [
            [CONSOLE_LOG, consolePipe],
            [VMM_LOG, logPipe],
          ] as const) {
            try {
              relays.push(
                await spawnProcess({
                  argv: relayArgv(vmId, file, logMaxBytes),
                  uid: owner.uid,
                  gid: owner.gid,
                  cwd: paths.dir,
                  stdin: pipe.read,
                  stdout: devNull,
                  stderr: devNull,
                  env: VMM_ENV,
                }),
              );
            } catch (error) {
              throw new FailedPreconditionError(
                `cannot start the log relay (${RELAY_BUSYBOX}; install busybox-static): ${(error as Error).message}`,
                { reason: "LOG_RELAY_UNUSABLE", cause: error },
              );
            }
          }
          try {
            child = await spawnProcess({
              argv,
              uid: owner.uid,
              gid: owner.gid,
              cwd: paths.dir,
              stdout: consolePipe.write,
              stderr: logPipe.write,
              env: VMM_ENV,
            });
          } catch (error) {
            throw new FailedPreconditionError(`cannot start ${argv[0]}: ${(error as Error).message}`, {
              reason: "VMM_BINARY_UNUSABLE",
              cause: error,
            });
          }
        } finally {
          // The relays end when the VMM's ends close (its exit), or at once when it never started.
          closePipes();
        }
        const stat = await readStat(child.pid, procRoot);
        const tails = async () => {
          // What the VMM printed before it exited is in the files once its relays have written it.
          await Promise.race([Promise.all(relays.map((r) => r.exited)), sleep(2000)]);
          return [await logTail(vm, CONSOLE_LOG, owner.uid), await logTail(vm, VMM_LOG, owner.uid)]
            .filter(Boolean)
            .join("\n");
        };
        if (!stat) {
          throw new FailedPreconditionError(`the VMM exited at once: ${await tails()}`, { reason: "VMM_EXITED" });
        }
        await waitForSocket(vm, socketName, child, tails);
        return {
          pid: child.pid,
          startTime: stat.startTime,
          controlSocket,
          logPath: paths.vmmLog,
          consolePath: paths.consoleLog,
        };
      } finally {
        launching.delete(vmId);
        await Promise.all(handles.reverse().map((h) => h.close()));
      }
    },

    async get(req) {
      const vmId = validVmId(req.vmId);
      const pid = validPid(req.pid);
      const startTime = validStartTime(req.startTime);
      const seen = await inspect(pid);
      if (seen.gone || seen.stat.state === "Z" || seen.stat.state === "X") return NOT_RUNNING;
      if (seen.stat.startTime !== startTime || seen.vmm?.vmId !== vmId || seen.uid !== config.ownerUid) {
        return NOT_RUNNING; // the pid was reused: that VMM is gone
      }
      const rssBytes = await readRssBytes(pid, procRoot);
      if (rssBytes === undefined) return NOT_RUNNING;
      return { running: true, cpuTimeMs: (seen.stat.cpuTicks * 1000) / CLK_TCK, rssBytes };
    },

    async signal(req) {
      const vmId = validVmId(req.vmId);
      const pid = validPid(req.pid);
      validStartTime(req.startTime);
      const signal = validSignal(req.signal);

      const seen = await inspect(pid);
      if (seen.gone) return { existed: false };
      // A zombie keeps its start time but has no command line left: it is dead, nothing to signal.
      if ((seen.stat.state === "Z" || seen.stat.state === "X") && seen.stat.startTime === req.startTime) {
        return { existed: false };
      }
      if (seen.stat.startTime !== req.startTime || seen.vmm?.vmId !== vmId || seen.uid !== config.ownerUid) {
        throw new PermissionDeniedError(`pid ${pid} is not the VMM of VM ${vmId}`, { reason: "NOT_THE_VMS_PROCESS" });
      }
      // Narrow the window between the proof and the signal (Node has no pidfd_send_signal).
      const now = await readStat(pid, procRoot);
      if (!now || now.startTime !== req.startTime) return { existed: false };
      try {
        process.kill(pid, signal);
      } catch (error) {
        if (errnoOf(error) === "ESRCH") return { existed: false };
        if (errnoOf(error) !== "EPERM") throw error;
        // Root without CAP_KILL (the helper's unit) may not signal the owner's process; the owner may.
        const owner = { uid: config.ownerUid, gid: config.ownerGid };
        const sent = await runner.run(["kill", "-s", signal.slice(3), String(pid)], { as: owner, okCodes: [0, 1] });
        if (sent.code === 0) return { existed: true };
        if (/no such process/i.test(sent.stderr)) return { existed: false };
        throw new HostCommandError(["kill", "-s", signal.slice(3), String(pid)], sent.code, sent.stderr);
      }
      return { existed: true };
    },

    async removeFiles(req) {
      const vmId = validVmId(req.vmId);
      const paths = vmRuntimePaths(config.runtimeDir, vmId);
      if (launching.has(vmId) || (await list()).some((p) => p.vmId === vmId)) {
        throw new FailedPreconditionError(`VM ${vmId}'s VMM still runs; signal it first`, { reason: "VMM_RUNNING" });
      }
      // Resolved from open directories, as at launch: a path swapped by the owner cannot redirect the removal.
      let runtime: FileHandle;
      try {
        runtime = await open(config.runtimeDir, DIR_FLAGS);
      } catch {
        return { existed: false };
      }
      try {
        const vms = await open(at(runtime, "vms"), DIR_FLAGS).catch(() => undefined);
        if (!vms) return { existed: false };
        try {
          await checkRootsDir(vms, paths.vmsDir);
          await stopRelays(vmId);
          return await removeVmDir(vms, vmId, { uid: config.ownerUid, gid: config.ownerGid }, runner, paths.dir);
        } finally {
          await vms.close();
        }
      } finally {
        await runtime.close();
      }
    },

    list,
  };
}
