/**
 * VmmService's fields against their rules (vmm.proto): each check touches nothing, and a launch
 * checks every field before anything happens.
 */
import type { Reason } from "@banger/common/reasons";
import { InvalidArgumentError } from "@banger/common/errors";
import { isPid } from "../host/proc.js";
import type { QemuMachine, VmmKind } from "../ops/vmm/types.js";
import { snapshotName } from "./ids.js";
import { confinedPath } from "./paths.js";

/** What a VM's console and its VMM's log each keep at most, current file and predecessor together. */
export const DEFAULT_LOG_MAX_BYTES = 8 * 1024 * 1024;
export const MIN_LOG_MAX_BYTES = 128 * 1024;
export const MAX_LOG_MAX_BYTES = 1024 * 1024 * 1024;

/** Linux x86 COMMAND_LINE_SIZE - 1. */
export const MAX_BOOT_ARGS_BYTES = 2048;

export function validKind(kind: unknown): VmmKind {
  if (kind !== "firecracker" && kind !== "qemu-microvm") {
    throw new InvalidArgumentError(`kind must be firecracker or qemu-microvm`, { reason: "INVALID_VMM_KIND" });
  }
  return kind;
}

function integerIn(value: unknown, min: number, max: number, field: string, reason: Reason): number {
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
  if (m.incoming !== undefined && typeof m.incoming !== "boolean") {
    throw new InvalidArgumentError("qemu.incoming must be a boolean", { reason: "INVALID_INCOMING" });
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
    incoming: m.incoming === true,
  };
}

/** LaunchVmm's log_max_bytes: 0 (or absent) = the default, else within the bounds. */
export function validLogMaxBytes(value: unknown): number {
  if (value === undefined || value === 0 || value === 0n) return DEFAULT_LOG_MAX_BYTES;
  const n = typeof value === "bigint" && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  return integerIn(n, MIN_LOG_MAX_BYTES, MAX_LOG_MAX_BYTES, "log_max_bytes", "INVALID_LOG_MAX_BYTES");
}

export function validPid(pid: unknown): number {
  if (typeof pid !== "number" || !isPid(pid) || pid <= 1) {
    throw new InvalidArgumentError("pid must be a process id greater than 1", { reason: "INVALID_PID" });
  }
  return pid;
}

export function validStartTime(startTime: unknown): bigint {
  if (typeof startTime !== "bigint" || startTime < 0n) {
    throw new InvalidArgumentError("start_time must be the one LaunchVmm returned", {
      reason: "INVALID_START_TIME",
    });
  }
  return startTime;
}

export function validSignal(signal: unknown): NodeJS.Signals {
  if (signal === "TERM") return "SIGTERM";
  if (signal === "KILL") return "SIGKILL";
  throw new InvalidArgumentError("signal must be TERM or KILL", { reason: "INVALID_SIGNAL" });
}
