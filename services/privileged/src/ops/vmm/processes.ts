/**
 * Which processes are the owner's VMMs and log relays, proved from /proc: a pid counts only when its
 * start time (read twice, around everything else), its command line (exactly an argv the helper
 * builds) and its real uid all agree, so a pid reused mid-read is never mistaken for a VM's.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { FailedPreconditionError } from "@banger/common/errors";
import type { Runner } from "@banger/common/host-runner";
import type { HelperConfig } from "../../config.js";
import { errnoOf } from "../../host/dirfd.js";
import { listPids, readCmdline, readCredentials, readStat, type ProcStat } from "../../host/proc.js";
import { identifyCmdline } from "./argv.js";
import { relayOf } from "./relay.js";
import type { VmmKind, VmmProcessInfo } from "./types.js";

/** What /proc says about a pid: gone, or its stat, the VMM its command line is (if any) and its real uid. */
export type Inspected =
  { gone: true } | { gone: false; stat: ProcStat; vmm: { vmId: string; kind: VmmKind } | undefined; uid: number };

export interface VmmProcesses {
  /** The VMM identity of `pid`, read so that a pid reused mid-read is not mistaken for it. */
  readonly inspect: (pid: number) => Promise<Inspected>;
  /** Every running VMM of the owner's VMs. */
  readonly list: () => Promise<VmmProcessInfo[]>;
  /** Ends the VM's log relays; FailedPrecondition VMM_FILES_BUSY when they do not go. */
  readonly stopRelays: (vmId: string) => Promise<void>;
}

export function createVmmProcesses(deps: {
  readonly config: HelperConfig;
  readonly procRoot: string;
  readonly runner: Runner;
}): VmmProcesses {
  const { config, procRoot, runner } = deps;

  async function inspect(pid: number): Promise<Inspected> {
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

  return { inspect, list, stopRelays };
}
