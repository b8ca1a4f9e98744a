/**
 * What is true of VMs now, in memory: running VMs' handles (also in each
 * VM's `handles.json`, checked against the host at start-up by recovery.ts),
 * the creates still running, the phase of a VM in the middle of an action,
 * and the locks: one lifecycle lock per VM and a short reservation lock for
 * creates, so the slow stages of different VMs overlap.
 */
import { statSync } from "node:fs";
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { StateLayout } from "@banger/common/layout";
import type { VmRecord } from "../../store/index.js";
import { createSerialLock } from "../serial-lock.js";
import type { AgentHealthName, Handles, VmStateName, VmView } from "./model.js";

type Lock = <T>(work: () => Promise<T>) => Promise<T>;

export interface VmRuntime {
  /** Running VMs' handles, by VM id. */
  readonly handles: Map<string, Handles>;
  /** Creates still running, by VM name: their operation ids (delete cancels them). */
  readonly creating: Map<string, string>;
  /** VMs in the middle of an action, by VM id. */
  readonly phases: Map<string, VmStateName>;
  /** Runs `work` under VM `name`'s lifecycle lock: its create, start, stop, delete, set and promote, one at a time. */
  lifecycle<T>(name: string, work: () => Promise<T>): Promise<T>;
  /** The short lock under which a create picks its name, addresses and row (milliseconds). */
  underReservation<T>(work: () => Promise<T>): Promise<T>;
  /** VM `vmId`'s agent lock: one agent session at a time (QEMU's port serves one client; others would queue). */
  agentLock(vmId: string): Lock;
  /** The VM as it is now, with its agent's health when it was asked. */
  view(vm: VmRecord, agent?: { health: AgentHealthName; version: string }): VmView;
  /** Records a running VM's handles (undefined: forgets them), in memory and in its handles.json. */
  saveHandles(vm: VmRecord, value: Handles | undefined): Promise<void>;
}

export function createVmRuntime(layout: StateLayout): VmRuntime {
  const handles = new Map<string, Handles>();
  const phases = new Map<string, VmStateName>();
  const lifecycleLocks = new Map<string, Lock>();
  const agentLocks = new Map<string, Lock>();
  const lockOf = (locks: Map<string, Lock>, key: string): Lock => {
    let lock = locks.get(key);
    if (!lock) locks.set(key, (lock = createSerialLock()));
    return lock;
  };
  return {
    handles,
    creating: new Map(),
    phases,
    lifecycle: (name, work) => lockOf(lifecycleLocks, name)(work),
    underReservation: createSerialLock(),
    agentLock: (vmId) => lockOf(agentLocks, vmId),
    view(vm, agent = { health: "", version: "" }) {
      const handle = handles.get(vm.id);
      const phase = phases.get(vm.id);
      const state: VmStateName =
        phase ??
        (handle
          ? handle.paused
            ? "paused"
            : handle.ready
              ? "running"
              : "starting"
          : vm.lastError
            ? "failed"
            : "stopped");
      // saved.json is written last of a saved state: its time is the save's.
      const saved = handle
        ? undefined
        : statSync(join(layout.vm(vm.id).savedDir, "saved.json"), { throwIfNoEntry: false });
      return {
        ...vm,
        state,
        pid: handle?.pid ?? 0,
        agentHealth: agent.health,
        agentVersion: agent.version,
        ...(saved ? { savedAt: saved.mtime } : {}),
      };
    },
    async saveHandles(vm, value) {
      const file = layout.vm(vm.id).handles;
      if (value) {
        handles.set(vm.id, value);
        await writeFile(file, JSON.stringify(value, null, 2), { mode: 0o600 });
      } else {
        handles.delete(vm.id);
        await rm(file, { force: true });
      }
    },
  };
}
