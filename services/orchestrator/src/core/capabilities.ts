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
 * - doctorChecks: what `banger doctor` reports for this feature
 */
import { InvalidArgumentError } from "@banger/common";
import type { VmRecord } from "../store/index.js";
import type { CallScope } from "./call-scope.js";
import type { HostPort } from "./host.js";
import type { BridgeNetwork } from "./vm-addresses.js";

export interface VmChange {
  readonly vcpu?: number;
  readonly memoryMib?: number;
  readonly workDiskMib?: number;
  readonly nat?: boolean;
}

export interface DoctorCheck {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

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
  doctorChecks?(): Promise<DoctorCheck[]>;
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

/** NAT to the outside for VMs that ask for it: a masquerade rule per VM, through the helper. */
export function natCapability(host: HostPort, bridge: string): Capability {
  return {
    name: "nat",
    dependsOn: [],
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

/**
 * `<name>.vm` names: the responder listens on the bridge address once the
 * bridge exists, and answers for running VMs only.
 */
export function dnsCapability(listen: (network: BridgeNetwork) => Promise<DoctorCheck>): Capability & {
  resolve(name: string): string | undefined;
} {
  const addresses = new Map<string, string>();
  let listening: DoctorCheck = { name: "dns", ok: false, detail: "the bridge does not exist yet" };
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
    doctorChecks: () => Promise.resolve([listening]),
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
  };
}
