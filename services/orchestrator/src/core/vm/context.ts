/**
 * What every part of the VM service works with: its dependencies (ports and
 * catalogs, given by the composition root), the paths of the layout, and the
 * in-memory runtime state. Built once per service by `createVmContext`.
 */
import { NotFoundError, type Logger } from "@banger/common";
import { runtimeLayout, stateLayout, type RuntimeLayout, type StateLayout } from "@banger/common/layout";
import type { Kysely } from "kysely";
import type { BangerConfig } from "../../config/index.js";
import { getVmByName, type Database, type VmRecord } from "../../store/index.js";
import type { CallScope } from "../call-scope.js";
import { orderCapabilities, workDiskCapability, type Capability } from "../capabilities.js";
import type { ImageCatalog } from "../images.js";
import type { KernelCatalog } from "../kernels.js";
import type { OperationContext, Operations } from "../operations.js";
import { createPortRelays, publishedPortsCapability, type PortRelays } from "../port-publishing.js";
import { createGuestConnections, type GuestConnections } from "../guest-connections.js";
import type { GuestPort, HostPort, VmmPorts } from "../ports.js";
import { parseBridgeAddress, type BridgeNetwork } from "../vm-addresses.js";
import { createNewVmChoices, type NewVmChoices } from "./choices.js";
import { validVmName } from "./model.js";
import { createVmNetwork, type VmNetwork } from "./network.js";
import { createVmRuntime, type VmRuntime } from "./runtime.js";

/** What the VM service is given (the composition root builds every port). */
export interface VmServiceDeps {
  readonly db: Kysely<Database>;
  readonly logger: Logger;
  readonly operations: Operations;
  readonly stateDir: string;
  readonly config: BangerConfig;
  readonly images: ImageCatalog;
  readonly kernels: KernelCatalog;
  readonly host: HostPort;
  readonly guest: GuestPort;
  /** banger's runtime directory: VMM logs are in `<runtimeDir>/vms/<id>/`. */
  readonly runtimeDir: string;
  /** The guests' private key (made on first use) and banger's known_hosts. */
  readonly ssh: { readonly identityFile: () => Promise<string>; readonly knownHostsFile: string };
  /** Host features (NAT, DNS, the work disk, …) whose hooks run at fixed points of a VM's life. */
  readonly capabilities?: readonly Capability[];
  /** The listeners of published ports; bangerd's own by default. */
  readonly portRelays?: PortRelays;
  readonly now?: () => Date;
}

export interface VmContext {
  readonly db: Kysely<Database>;
  readonly logger: Logger;
  readonly operations: Operations;
  readonly config: BangerConfig;
  readonly images: ImageCatalog;
  readonly kernels: KernelCatalog;
  readonly host: HostPort;
  readonly guest: GuestPort;
  readonly vmm: VmmPorts;
  readonly ssh: VmServiceDeps["ssh"];
  readonly state: StateLayout;
  readonly run: RuntimeLayout;
  readonly network: BridgeNetwork;
  readonly now: () => Date;
  readonly runtime: VmRuntime;
  readonly net: VmNetwork;
  readonly choices: NewVmChoices;
  /** The listeners of the running VMs' published ports. */
  readonly relays: PortRelays;
  /** SSH connections kept open to running guests between commands. */
  readonly connections: GuestConnections;
  /** Runs `hook` of every capability in dependency order (reverse for cleanups). */
  eachCapability(reverse: boolean, hook: (capability: Capability) => Promise<void> | undefined): Promise<void>;
  /** The VM named `name`; VM_NOT_FOUND when there is none. */
  find(name: string): Promise<VmRecord>;
}

export function createVmContext(deps: VmServiceDeps, vmm: VmmPorts): VmContext {
  const { db, logger, host, guest, config } = deps;
  const state = stateLayout(deps.stateDir);
  const relays = deps.portRelays ?? createPortRelays(logger);
  // The work disk and published ports are this service's own; the composition root adds the rest (NAT, DNS, …).
  const capabilities = orderCapabilities([
    workDiskCapability((vm, sizeMib) =>
      guest.growWorkDisk(state.vm(vm.id).workDisk, sizeMib, AbortSignal.timeout(120_000)),
    ),
    publishedPortsCapability(relays),
    ...(deps.capabilities ?? []),
  ]);
  const eachCapability: VmContext["eachCapability"] = async (reverse, hook) => {
    for (const capability of reverse ? [...capabilities].reverse() : capabilities) await hook(capability);
  };
  const network = parseBridgeAddress(config.network.address);
  return {
    db,
    logger,
    operations: deps.operations,
    config,
    images: deps.images,
    kernels: deps.kernels,
    host,
    guest,
    vmm,
    ssh: deps.ssh,
    state,
    run: runtimeLayout(deps.runtimeDir),
    network,
    now: deps.now ?? (() => new Date()),
    runtime: createVmRuntime(state),
    net: createVmNetwork({
      host,
      logger,
      bridge: config.network.bridge,
      address: config.network.address,
      network,
      poolSize: config.network.tapPool,
      eachCapability,
    }),
    choices: createNewVmChoices({ host, config, logger }),
    relays,
    connections: createGuestConnections(),
    eachCapability,
    async find(name) {
      const vm = await getVmByName(db, validVmName(name));
      if (!vm) throw new NotFoundError(`VM ${name} does not exist`, { reason: "VM_NOT_FOUND" });
      return vm;
    },
  };
}

/** The call scope of an operation's work: its cancellation. */
export const scopeOf = (op: OperationContext): CallScope => ({ signal: op.signal });
