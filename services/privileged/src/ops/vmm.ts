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
import { open, type FileHandle } from "node:fs/promises";
import { FailedPreconditionError, HostCommandError, PermissionDeniedError } from "@banger/common/errors";
import type { HelperConfig } from "../config.js";
import { DIR_FLAGS, at, checkRootsDir, errnoOf, removeVmDir } from "../host/dirfd.js";
import { CLK_TCK, DEFAULT_PROC_ROOT, dateToStartTime, readRssBytes, readStat, startTimeToDate } from "../host/proc.js";
import type { HelperPorts } from "../ports.js";
import { validVmId } from "../validate/ids.js";
import { validPid, validSignal, validStartTime } from "../validate/vmm.js";
import { launchVmm, type LaunchDeps } from "./vmm/launch.js";
import { createVmmProcesses } from "./vmm/processes.js";
import { vmRuntimePaths } from "./vmm/runtime-paths.js";
import type { LaunchRequest, LaunchResult, VmmProcessInfo, VmmSignal, VmmState } from "./vmm/types.js";

export { firecrackerArgv, qemuArgv } from "./vmm/argv.js";
export type { LaunchResult, QemuMachine, VmmKind, VmmProcessInfo, VmmSignal, VmmState } from "./vmm/types.js";

const NOT_RUNNING: VmmState = { running: false, cpuTimeMs: 0, rssBytes: 0 };

export interface VmmOps {
  launch(req: LaunchRequest): Promise<LaunchResult>;
  signal(req: { vmId: string; pid: number; startTime: bigint; signal: VmmSignal }): Promise<{ existed: boolean }>;
  /** Whether that pid is still the VM's VMM (proved as for signal), and its CPU time and memory. */
  get(req: { vmId: string; pid: number; startTime: bigint }): Promise<VmmState>;
  list(): Promise<VmmProcessInfo[]>;
  /** Removes `<runtime>/vms/<vm_id>/` once the VM's VMM is gone. */
  removeFiles(req: { vmId: string }): Promise<{ existed: boolean }>;
}

/** The ports the VMM ops use (main.ts builds them with `hostPorts(owner)`; tests hand in their own). */
export interface VmmDeps extends Pick<
  HelperPorts,
  "runner" | "procRoot" | "spawnProcess" | "kvmUsable" | "hostTscKhz"
> {
  readonly config: HelperConfig;
  /** How long a new VMM has to create its control socket (default 10 s). */
  readonly readyTimeoutMs?: number;
}

/** A start time (ticks since boot) as the wall-clock time the rpc layer sends as a Timestamp. */
export function vmmStartDate(startTime: bigint, procRoot = DEFAULT_PROC_ROOT): Date {
  return startTimeToDate(startTime, procRoot);
}

/** The inverse of `vmmStartDate`, for a Timestamp received in SignalVmm. */
export function vmmStartTimeFromDate(date: Date, procRoot = DEFAULT_PROC_ROOT): bigint {
  return dateToStartTime(date, procRoot);
}

export function createVmmOps(deps: VmmDeps): VmmOps {
  const { config } = deps;
  const { procRoot, runner } = deps;
  const processes = createVmmProcesses({ config, procRoot, runner });
  const { inspect, list, stopRelays } = processes;
  const launchDeps: LaunchDeps = {
    config,
    procRoot,
    spawnProcess: deps.spawnProcess,
    kvmUsable: deps.kvmUsable,
    hostTscKhz: deps.hostTscKhz,
    readyTimeoutMs: deps.readyTimeoutMs ?? 10_000,
    processes,
    /** VMs whose launch is under way in this helper (between the running check and the spawn). */
    launching: new Set<string>(),
  };
  const { launching } = launchDeps;

  return {
    launch: (req) => launchVmm(launchDeps, req),

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
