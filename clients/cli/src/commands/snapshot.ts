import { SnapshotSchema, type Snapshot } from "@banger/gen/banger/v1/resources_pb.js";
import { VmService } from "@banger/gen/banger/v1/vm_pb.js";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import type { GlobalOptions } from "../context.js";
import { printJsonList } from "../render/json.js";
import { mib } from "../render/size.js";
import { renderTable } from "../render/table.js";
import { registerDelete, registerListShow } from "./resource.js";
import { announceAndWatch, detachOption, withOrchestrator } from "./op.js";

/** `snapshot list`, `show`, `delete` (snapshots are taken with `vm snapshot`). */
export function registerSnapshotCommands(snapshot: Command, globals: () => GlobalOptions): void {
  registerListShow(snapshot, globals, {
    listDescription: "snapshots of VMs",
    showDescription: "one snapshot: source VM, image, kernel, vCPUs, memory, size",
    nameArgument: "snapshot name",
    fetchAll: async (o) => (await o.client(VmService).listSnapshots({}, o.callOptions())).snapshots,
    fetchOne: async (o, name) => (await o.client(VmService).getSnapshot({ name }, o.callOptions())).snapshot,
    print: printSnapshots,
    describe: describeSnapshot,
  });
  registerDelete(snapshot, globals, {
    noun: "snapshot",
    description: "delete a snapshot and its files (deleting a missing snapshot succeeds)",
    remove: async (o, name) => (await o.client(VmService).deleteSnapshot({ name }, o.callOptions())).existed,
  });
}

/** `vm snapshot NAME --as SNAP`. */
export function registerVmSnapshotCommand(vm: Command, globals: () => GlobalOptions): void {
  vm.command("snapshot")
    .argument("<name>", "a running VM")
    .requiredOption("--as <snapshot>", "name of the new snapshot")
    .description(
      "snapshot a running VM's memory, device state and disks at one instant (the guest is paused meanwhile and " +
        "runs on after); list, show and delete them with 'banger snapshot'",
    )
    .option("--no-wait", "print the operation id and return at once")
    .addOption(detachOption())
    .option("--json", "print the snapshot as JSON when done")
    .action(async (name: string, opts: { as: string; wait: boolean; json?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const { operation } = await o.client(VmService).snapshotVm({ name, as: opts.as }, o.callOptions());
        if (!operation) return;
        const done = await announceAndWatch(o, operation, `snapshotting ${name} as ${opts.as}`, opts.wait);
        if (done?.result.case === "snapshot") printSnapshots([done.result.value], opts.json === true);
      });
    });
}

const created = (s: Snapshot) => (s.createTime ? timestampDate(s.createTime).toISOString() : "");

function printSnapshots(snapshots: readonly Snapshot[], json: boolean): void {
  if (json) return printJsonList(SnapshotSchema, snapshots);
  const rows = snapshots.map((s) => [s.name, s.vmName, s.image, s.kernel, mib(s.allocatedBytes), created(s)]);
  process.stdout.write(renderTable(["NAME", "VM", "IMAGE", "KERNEL", "SIZE", "CREATED"], rows));
}

/** The lines of `snapshot show`. */
function describeSnapshot(s: Snapshot): string[] {
  return [
    `name:    ${s.name}`,
    `vm:      ${s.vmName}`,
    `image:   ${s.image}`,
    `kernel:  ${s.kernel}`,
    `vmm:     ${s.vmm}`,
    `vcpu:    ${s.vcpu}`,
    `memory:  ${s.memoryMib} MiB`,
    `work:    ${s.workDiskMib} MiB`,
    `size:    ${mib(s.allocatedBytes)} (allocated)`,
    `created: ${created(s)}`,
  ];
}
