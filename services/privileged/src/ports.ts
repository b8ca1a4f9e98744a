/**
 * The helper's ports: what its ops do to the host besides the files they open through open
 * directories (host/dirfd.ts) and the confined state-directory opens (validate/paths.ts). main.ts,
 * the composition root, builds the host's adapters once with `hostPorts()` and hands each op the
 * ports it uses; tests hand in their own.
 */
import type { Socket } from "node:net";
import { createHostRunner, type Runner } from "@banger/common/host-runner";
import type { PeerCredentials } from "@banger/common/op-id";
import { probeHostFeatures, type HostFeatures, type VmmUser } from "./host/features.js";
import { peerCredentials } from "./host/peer-cred.js";
import { DEFAULT_PROC_ROOT, cpuKhz, spawnDetached, type SpawnDetached } from "./host/proc.js";

export interface HelperPorts {
  /** Runs host tools: ip, nft, losetup, dmsetup, e2fsprogs as the owner, `kill` and `find` as the owner. */
  readonly runner: Runner;
  /** Starts a process that outlives the helper, as the owner: a VM's VMM and its log relays. */
  readonly spawnProcess: SpawnDetached;
  /** Where /proc is: every pid the helper proves (VMM identity, start times) and the TSC are read there. */
  readonly procRoot: string;
  /** What the host offers (tun, bridge, nftables, loop, device-mapper, resolved, KVM, …), probed now. */
  readonly hostFeatures: () => HostFeatures;
  /** Whether the owner's VMM can use /dev/kvm. */
  readonly kvmUsable: () => boolean;
  /** The host's TSC frequency, handed to TCG guests. */
  readonly hostTscKhz: () => number | undefined;
  /** Whether systemd-resolved runs (the `.vm` route goes to it). */
  readonly resolvedPresent: () => boolean;
  /** The kernel's word on who is at the other end of a connection (SO_PEERCRED). */
  readonly peerCredentials: (socket: Socket) => PeerCredentials | undefined;
}

/**
 * The real host: common's host runner, detached spawns, /proc, the host feature probe (KVM for `vmmUser`,
 * who VMMs run as), SO_PEERCRED.
 */
export function hostPorts(vmmUser: VmmUser, procRoot: string = DEFAULT_PROC_ROOT): HelperPorts {
  return {
    runner: createHostRunner(),
    spawnProcess: spawnDetached,
    procRoot,
    hostFeatures: () => probeHostFeatures(vmmUser),
    kvmUsable: () => probeHostFeatures(vmmUser).kvm,
    hostTscKhz: () => cpuKhz(procRoot),
    resolvedPresent: () => probeHostFeatures(vmmUser).resolved,
    peerCredentials,
  };
}
