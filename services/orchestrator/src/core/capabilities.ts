/**
 * Host features a VM can have, as plain objects with explicit dependencies
 * and optional hooks the lifecycle calls at fixed points. Adding a host
 * feature means adding one of these, not threading code through vms.ts.
 *
 * - preflight: before a create's operation begins (refuse bad requests early)
 * - prepareHost: once, after the bridge exists (e.g. the DNS responder listens)
 * - postStart: after the VMM started (and at start-up for VMs found running);
 *   must be idempotent; undone by cleanup if a later step fails
 * - cleanup: when the VM stops, is deleted or its start unwinds; idempotent
 * - applyConfigChange: SetVm, with the VM running or not
 * - doctorChecks: what `banger doctor` reports for this feature, from the
 *   host facts doctor gathered once (no host calls of its own needed)
 */
import { InvalidArgumentError } from "@banger/common";
import type { VmRecord } from "../store/index.js";
import type { CallScope } from "./call-scope.js";
import type { HostFeatures, HostPort } from "./ports.js";
import type { BridgeNetwork } from "./vm-addresses.js";

export interface VmChange {
  readonly vcpu?: number;
  readonly memoryMib?: number;
  readonly workDiskMib?: number;
  readonly nat?: boolean;
}

/** ok: fine; warn: works, but not as well as it could; fail: banger (or the capability) cannot work until fixed. */
export type CheckStatus = "ok" | "warn" | "fail";

/** One thing `banger doctor` looked at. */
export interface DoctorCheck {
  /** Stable kebab-case id, e.g. "ip-forwarding". */
  readonly name: string;
  readonly status: CheckStatus;
  /** What was found, one line. */
  readonly detail: string;
  /** What to do about it, one line; "" when ok. */
  readonly hint: string;
}

/** What doctor found out about the host once, for every capability's checks. */
export interface DoctorFacts {
  /** What the privileged helper probed; undefined when it could not be asked. */
  readonly features: HostFeatures | undefined;
  /** net.ipv4.ip_forward as the helper reads it, else where bangerd runs; undefined when neither could read it. */
  readonly ipForwarding: boolean | undefined;
  /** Whether bangerd may listen on port 53, and why (e.g. "holds CAP_NET_BIND_SERVICE"). */
  readonly lowPorts: { readonly ok: boolean; readonly why: string } | undefined;
  /** Host tools as bangerd finds them (its PATH: /usr/sbin:/usr/bin:/sbin:/bin): name → path, undefined = missing. */
  readonly tools: ReadonlyMap<string, string | undefined>;
}

/** Tools doctor looks up for the capabilities (beside its own mkfs.ext4, debugfs and e2fsck). */
export const CAPABILITY_TOOLS = ["resize2fs", "dumpe2fs"] as const;

const HELPER_DOWN = "not checked: the privileged helper is not reachable";

export interface Capability {
  readonly name: string;
  /** Capabilities whose hooks must run before this one's (postStart; cleanup runs in reverse). */
  readonly dependsOn: readonly string[];
  preflight?(request: { vmName: string; nat: boolean; workDiskMib: number }): Promise<void>;
  prepareHost?(network: BridgeNetwork): Promise<void>;
  postStart?(vm: VmRecord, scope: CallScope): Promise<void>;
  cleanup?(vm: VmRecord, scope: CallScope): Promise<void>;
  /** Applies `change` (already validated); `running` tells whether the VM runs now. */
  applyConfigChange?(vm: VmRecord, change: VmChange, running: boolean, scope: CallScope): Promise<void>;
  doctorChecks?(facts: DoctorFacts): Promise<DoctorCheck[]>;
}

/** The capabilities in an order where each comes after what it depends on; refuses unknown names and cycles. */
export function orderCapabilities(capabilities: readonly Capability[]): Capability[] {
  const byName = new Map(capabilities.map((c) => [c.name, c]));
  const ordered: Capability[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (capability: Capability, path: readonly string[]) => {
    if (state.get(capability.name) === "done") return;
    if (state.get(capability.name) === "visiting") {
      throw new InvalidArgumentError(
        `capabilities depend on each other in a cycle: ${[...path, capability.name].join(" → ")}`,
        {
          reason: "CAPABILITY_CYCLE",
        },
      );
    }
    state.set(capability.name, "visiting");
    for (const dependency of capability.dependsOn) {
      const found = byName.get(dependency);
      if (!found) {
        throw new InvalidArgumentError(`capability ${capability.name} depends on ${dependency}, which does not exist`, {
          reason: "CAPABILITY_MISSING",
        });
      }
      visit(found, [...path, capability.name]);
    }
    state.set(capability.name, "done");
    ordered.push(capability);
  };
  for (const capability of capabilities) visit(capability, []);
  return ordered;
}

/**
 * NAT to the outside for VMs that ask for it: a masquerade rule per VM, through the helper.
 * Its doctor checks (nftables, IP forwarding) fail only when `byDefault` (config vm.nat)
 * makes every new VM want NAT; otherwise a lack is a warning about `--nat`.
 */
export function natCapability(host: HostPort, bridge: string, byDefault = false): Capability {
  const lacking: CheckStatus = byDefault ? "fail" : "warn";
  const who = byDefault ? "new VMs (vm.nat = true)" : "VMs created with --nat";
  return {
    name: "nat",
    dependsOn: [],
    doctorChecks(facts) {
      const nftables: DoctorCheck =
        facts.features === undefined
          ? { name: "nftables", status: "warn", detail: HELPER_DOWN, hint: "" }
          : facts.features.nftables
            ? { name: "nftables", status: "ok", detail: "nft and the nf_tables subsystem are present", hint: "" }
            : {
                name: "nftables",
                status: lacking,
                detail: `nftables is not usable (no nft binary or no nf_tables): ${who} cannot get NAT`,
                hint: "install nftables (e.g. sudo apt-get install nftables)",
              };
      const forwarding: DoctorCheck =
        facts.ipForwarding === undefined
          ? {
              name: "ip-forwarding",
              status: "warn",
              detail: "cannot read /proc/sys/net/ipv4/ip_forward",
              hint: "",
            }
          : facts.ipForwarding
            ? { name: "ip-forwarding", status: "ok", detail: "net.ipv4.ip_forward = 1", hint: "" }
            : {
                name: "ip-forwarding",
                status: lacking,
                detail: `net.ipv4.ip_forward = 0: ${who} cannot reach the outside`,
                hint: "sudo sysctl -w net.ipv4.ip_forward=1, and keep it in /etc/sysctl.d/ (banger system install does)",
              };
      return Promise.resolve([nftables, forwarding]);
    },
    async postStart(vm, scope) {
      if (vm.nat) await host.enableNat(vm.id, vm.guestIp, bridge, scope);
    },
    async cleanup(vm, scope) {
      await host.disableNat(vm.id, scope);
    },
    async applyConfigChange(vm, change, running, scope) {
      if (change.nat === undefined || !running) return;
      if (change.nat) await host.enableNat(vm.id, vm.guestIp, bridge, scope);
      else await host.disableNat(vm.id, scope);
    },
  };
}

/** What trying to listen for `<name>.vm` queries gave. */
export interface DnsListenResult {
  readonly ok: boolean;
  readonly detail: string;
}

/**
 * `<name>.vm` names: the responder listens on the bridge address once the
 * bridge exists, and answers for running VMs only.
 */
export function dnsCapability(listen: (network: BridgeNetwork) => Promise<DnsListenResult>): Capability & {
  resolve(name: string): string | undefined;
} {
  const addresses = new Map<string, string>();
  let listening: DnsListenResult | undefined;
  const bindHint =
    "sudo banger system install (systemd binds port 53 for bangerd), or sudo sysctl -w net.ipv4.ip_unprivileged_port_start=53";
  const listenHint =
    "port 53 on the bridge address must be free, and bound for bangerd (sudo banger system install) or bindable by it";
  return {
    name: "dns",
    dependsOn: [],
    resolve: (name) => addresses.get(name),
    async prepareHost(network) {
      listening = await listen(network);
    },
    postStart(vm) {
      addresses.set(vm.name, vm.guestIp);
      return Promise.resolve();
    },
    cleanup(vm) {
      addresses.delete(vm.name);
      return Promise.resolve();
    },
    doctorChecks(facts) {
      let responder: DoctorCheck;
      if (listening !== undefined) {
        responder = listening.ok
          ? { name: "dns", status: "ok", detail: listening.detail, hint: "" }
          : { name: "dns", status: "fail", detail: listening.detail, hint: listenHint };
      } else if (facts.lowPorts === undefined || facts.lowPorts.ok) {
        const why = facts.lowPorts ? ` (bangerd ${facts.lowPorts.why})` : "";
        responder = {
          name: "dns",
          status: "ok",
          detail: `listens on the bridge address, port 53, when the first VM starts${why}`,
          hint: "",
        };
      } else {
        responder = {
          name: "dns",
          status: "fail",
          detail: `bangerd cannot listen on port 53: ${facts.lowPorts.why}; <name>.vm will not resolve`,
          hint: bindHint,
        };
      }
      const resolved: DoctorCheck =
        facts.features === undefined
          ? { name: "resolved", status: "warn", detail: HELPER_DOWN, hint: "" }
          : facts.features.resolved
            ? {
                name: "resolved",
                status: "ok",
                detail: "systemd-resolved runs: this host resolves <name>.vm through banger's DNS",
                hint: "",
              }
            : {
                name: "resolved",
                status: "warn",
                detail: "systemd-resolved does not run: this host cannot resolve <name>.vm (guests can)",
                hint: "use the VM's address (banger vm show NAME), or run systemd-resolved",
              };
      return Promise.resolve([responder, resolved]);
    },
  };
}

/** The persistent work disk: grown by SetVm while the VM is stopped (a running VM gets it at its next start). */
export function workDiskCapability(grow: (vm: VmRecord, sizeMib: number) => Promise<void>): Capability {
  return {
    name: "work-disk",
    dependsOn: [],
    async applyConfigChange(vm, change, running) {
      if (change.workDiskMib !== undefined && !running) await grow(vm, change.workDiskMib);
    },
    doctorChecks: workDiskDoctorChecks,
  };
}

/**
 * The work disk's doctor checks: bangerd grows each new work disk from the
 * image's seed (resize2fs) after reading its size (dumpe2fs); mkfs.ext4,
 * e2fsck and debugfs are doctor's own checks.
 */
export function workDiskDoctorChecks(facts: DoctorFacts): Promise<DoctorCheck[]> {
  const found = CAPABILITY_TOOLS.map((tool) => [tool, facts.tools.get(tool)] as const);
  const missing = found.filter(([, path]) => path === undefined).map(([tool]) => tool);
  return Promise.resolve([
    missing.length === 0
      ? {
          name: "work-disk-tools",
          status: "ok",
          detail: found.map(([, path]) => path).join(", "),
          hint: "",
        }
      : {
          name: "work-disk-tools",
          status: "fail",
          detail: `${missing.join(" and ")} not found in /usr/sbin:/usr/bin:/sbin:/bin: work disks cannot be made or grown`,
          hint: "install e2fsprogs (e.g. sudo apt-get install e2fsprogs)",
        },
  ]);
}
