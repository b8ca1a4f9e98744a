/**
 * The host network VMs boot onto: the bridge (ensured once per orchestrator
 * run, on the first boot, with the capabilities' prepareHost hooks after it)
 * and the warm tap pool, kept topped up in the background so a create takes
 * a ready tap over instead of waiting for a link to be made.
 */
import { FailedPreconditionError, type Logger } from "@banger/common";
import type { VmRecord } from "../../store/index.js";
import type { CallScope } from "../call-scope.js";
import type { Capability } from "../capabilities.js";
import type { OperationContext } from "../operations.js";
import type { HostPort } from "../ports.js";
import type { BridgeNetwork } from "../vm-addresses.js";
import { SharedReason } from "@banger/common/reasons";

export interface VmNetwork {
  /** Resolves when the bridge exists and the capabilities prepared the host; a failure is retried by the next call. */
  ready(scope: CallScope): Promise<void>;
  /** The VM's tap: a warm-pool one taken over, else one made now. */
  takeTap(op: OperationContext, vm: VmRecord, scope: CallScope): Promise<string>;
  /** A warm-pool tap found at start-up, taken into the pool. */
  adoptPoolTap(name: string): void;
}

export function createVmNetwork(deps: {
  readonly host: HostPort;
  readonly logger: Logger;
  readonly bridge: string;
  /** The bridge's address with its prefix (the config's network.address). */
  readonly address: string;
  readonly network: BridgeNetwork;
  readonly poolSize: number;
  readonly eachCapability: (
    reverse: boolean,
    hook: (capability: Capability) => Promise<void> | undefined,
  ) => Promise<void>;
}): VmNetwork {
  const { host, logger, bridge } = deps;
  let bridgeReady: Promise<void> | undefined;
  /** Warm-pool taps ready to be taken over. */
  const tapPool: string[] = [];
  let refilling: Promise<void> | undefined;
  /** A tap was taken while a refill ran: it may have ended its loop already, so another follows. */
  let again = false;
  /** Tops the warm pool up in the background (one refill at a time; failures only logged). */
  const refillTapPool = (): Promise<void> => {
    if (refilling) {
      again = true;
      return refilling;
    }
    const run = async () => {
      try {
        while (tapPool.length < deps.poolSize) {
          tapPool.push(await host.createPoolTap(bridge, { signal: AbortSignal.timeout(30_000) }));
        }
      } catch (error) {
        logger.warn({ err: error }, "could not top up the warm tap pool; creates make their own taps");
      }
    };
    // Cleared from a .finally, which always runs later: clearing inside run() would come before the
    // assignment when the pool is already full, and leave a settled refill in place for good.
    refilling = run().finally(() => {
      refilling = undefined;
      if (again) {
        again = false;
        void refillTapPool();
      }
    });
    return refilling;
  };
  return {
    ready: (scope) =>
      (bridgeReady ??= host
        .ensureBridge(bridge, deps.address, scope)
        .then(async () => {
          void refillTapPool();
          await deps.eachCapability(false, (c) => c.prepareHost?.(deps.network));
        })
        .catch((error: unknown) => {
          bridgeReady = undefined;
          throw error;
        })),
    async takeTap(op, vm, scope) {
      const pooled = tapPool.shift();
      // The address may have been another VM's: the helper has the host forget that VM's MAC for it.
      if (pooled === undefined) return host.createTap(vm.id, bridge, scope, { guestAddress: vm.guestIp });
      void refillTapPool();
      try {
        const tap = await host.createTap(vm.id, bridge, scope, { fromPool: pooled, guestAddress: vm.guestIp });
        await op.track("tap", "running", `tap ${tap} from the warm pool`);
        return tap;
      } catch (error) {
        logger.warn({ err: error, tap: pooled }, "a warm-pool tap could not be taken over; making a new one");
        // One the helper will never hand over (made for another uid) goes; deleting refuses what is not a pool tap.
        if (error instanceof FailedPreconditionError && error.reason === SharedReason.NOT_IN_POOL) {
          await host.deletePoolTap(pooled, scope).catch(() => undefined);
        }
        return host.createTap(vm.id, bridge, scope, { guestAddress: vm.guestIp });
      }
    },
    adoptPoolTap(name) {
      if (!tapPool.includes(name)) tapPool.push(name);
    },
  };
}
