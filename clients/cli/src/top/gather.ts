import { OperationService } from "@banger/gen/banger/v1/operation_pb.js";
import { SystemService } from "@banger/gen/banger/v1/system_pb.js";
import { VmService, type VmStatsResponse } from "@banger/gen/banger/v1/vm_pb.js";
import type { Orchestrator } from "../client.js";
import { reservesHost, type TopData } from "../render/top-view.js";

/** How many operations one refresh asks for (the running ones and the most recent ended ones). */
const OPERATIONS_LIMIT = 20;

/**
 * One refresh: the VMs (ListVms), the stats of those that run (VmStats, in parallel: each measures over one
 * second), the host's capacity (GetCapacity) and the recent operations (ListOperations). A VM whose stats
 * fail (it stopped meanwhile) has none this time.
 */
export async function gatherTop(o: Orchestrator, signal?: AbortSignal): Promise<TopData> {
  const options = o.callOptions(signal ? { signal } : {});
  const vmClient = o.client(VmService);
  const [{ vms }, capacity, { operations }] = await Promise.all([
    vmClient.listVms({}, options),
    o.client(SystemService).getCapacity({}, options),
    o.client(OperationService).listOperations({ limit: OPERATIONS_LIMIT }, options),
  ]);
  const stats = new Map<string, VmStatsResponse>();
  await Promise.all(
    vms.filter(reservesHost).map(async (vm) => {
      const answer = await vmClient.vmStats({ name: vm.name }, options).catch(() => undefined);
      if (answer) stats.set(vm.name, answer);
    }),
  );
  return { vms, stats, capacity, operations };
}
