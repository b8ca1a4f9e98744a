/**
 * `vm port add|rm|ls` and `vm create -p`: host ports published to a guest, in docker's spelling
 * `[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]`. (`vm ports` is another thing: what listens in the guest.)
 */
import { PublishedPortSchema, type PublishedPort, type Vm } from "@banger/gen/banger/v1/resources_pb.js";
import { VmService } from "@banger/gen/banger/v1/vm_pb.js";
import type { Command } from "commander";
import type { GlobalOptions } from "../context.js";
import { UsageError } from "../errors.js";
import { printJsonList } from "../render/json.js";
import { renderTable } from "../render/table.js";
import { withOrchestrator } from "./op.js";

/** The parts of a spec; the numbers and the address are checked by bangerd. */
interface PortSpec {
  readonly hostIp: string;
  readonly hostPort: number;
  readonly guestPort: number | undefined;
  readonly protocol: string;
}

const SPEC = /^(?:(\d{1,3}(?:\.\d{1,3}){3}):)?(\d{1,5})(?::(\d{1,5}))?(?:\/(tcp|udp))?$/;

/** Parses `[HOSTIP:]HOSTPORT[:GUESTPORT][/tcp|udp]`; `needGuest` makes the guest port required. */
export function parsePortSpec(spec: string, needGuest: boolean): PortSpec {
  const match = SPEC.exec(spec);
  const guest = match?.[3];
  if (!match || (needGuest && guest === undefined)) {
    throw new UsageError(
      `a published port is ${needGuest ? "[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]" : "[HOSTIP:]HOSTPORT[/tcp|udp]"}, ` +
        `e.g. 8080:80 or 127.0.0.1:5353:53/udp; got ${JSON.stringify(spec)}`,
    );
  }
  return {
    hostIp: match[1] ?? "",
    hostPort: Number(match[2]),
    guestPort: guest === undefined ? undefined : Number(guest),
    protocol: match[4] ?? "tcp",
  };
}

/** A spec as CreateVm and PublishVmPort take it. */
export function publishedPortOf(spec: string): {
  hostIp: string;
  hostPort: number;
  guestPort: number;
  protocol: string;
} {
  const { hostIp, hostPort, guestPort, protocol } = parsePortSpec(spec, true);
  return { hostIp, hostPort, guestPort: guestPort ?? 0, protocol };
}

/** commander's collector of a repeatable option. */
export const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** `0.0.0.0:8080->80/tcp`, as docker prints it. */
export const portWord = (port: PublishedPort): string =>
  `${port.hostIp}:${port.hostPort}->${port.guestPort}/${port.protocol}`;

/** `vm show`'s line of published ports, none when there are none. */
export function describePublished(vm: Vm): string[] {
  return vm.publishedPorts.length === 0 ? [] : [`ports:     ${vm.publishedPorts.map(portWord).join(", ")}`];
}

function printPorts(vm: Vm, json: boolean): void {
  if (json) return printJsonList(PublishedPortSchema, vm.publishedPorts);
  const rows = vm.publishedPorts.map((p) => [p.protocol, p.hostIp, String(p.hostPort), String(p.guestPort)]);
  process.stdout.write(renderTable(["PROTO", "HOST ADDRESS", "HOST PORT", "GUEST PORT"], rows));
}

/** `vm port add|rm|ls`. */
export function registerPortCommands(vm: Command, globals: () => GlobalOptions): void {
  const port = vm
    .command("port")
    .description("host ports published to a VM (`vm ports` lists what listens in the guest)");
  port
    .command("add")
    .argument("<name>", "VM name")
    .argument("<spec>", "[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp], e.g. 8080:80")
    .description("publish a host port to the guest: at once if the VM runs, else from its next start")
    .option("--json", "print the VM's published ports as JSON")
    .action(async (name: string, spec: string, opts: { json?: boolean }) => {
      const wanted = publishedPortOf(spec);
      await withOrchestrator(globals(), async (o) => {
        const { vm: changed } = await o.client(VmService).publishVmPort({ name, port: wanted }, o.callOptions());
        if (changed) printPorts(changed, opts.json === true);
      });
    });
  port
    .command("rm")
    .argument("<name>", "VM name")
    .argument("<spec>", "[HOSTIP:]HOSTPORT[/tcp|udp] (a GUESTPORT after the host port is ignored)")
    .description("stop publishing a host port: its listener and connections close at once")
    .option("--json", "print the VM's published ports as JSON")
    .action(async (name: string, spec: string, opts: { json?: boolean }) => {
      const { hostIp, hostPort, protocol } = parsePortSpec(spec, false);
      await withOrchestrator(globals(), async (o) => {
        const { vm: changed } = await o
          .client(VmService)
          .unpublishVmPort({ name, hostPort, protocol, hostIp }, o.callOptions());
        if (changed) printPorts(changed, opts.json === true);
      });
    });
  port
    .command("ls")
    .argument("<name>", "VM name")
    .description("the host ports a VM publishes")
    .option("--json", "print JSON")
    .action(async (name: string, opts: { json?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const { vm: found } = await o.client(VmService).getVm({ name }, o.callOptions());
        if (found) printPorts(found, opts.json === true);
      });
    });
}
