import { AgentHealth, VmSchema, VmState, type Vm } from "@banger/gen/banger/v1/resources_pb.js";
import { ListeningPortSchema, VmLogSource, VmService, VmStatsResponseSchema } from "@banger/gen/banger/v1/vm_pb.js";
import type { Operation } from "@banger/gen/banger/v1/operation_pb.js";
import { toJson } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { runAttached } from "@banger/common/host-runner";
import { randomBytes } from "node:crypto";
import { ExecService } from "@banger/gen/banger/v1/exec_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Command } from "commander";
import type { Orchestrator } from "../client.js";
import type { GlobalOptions } from "../context.js";
import { PassExitCode, UsageError } from "../errors.js";
import { printJsonList } from "../render/json.js";
import { mib } from "../render/size.js";
import { renderTable } from "../render/table.js";
import { registerListShow } from "./resource.js";
import { announceAndWatch, detachOption, watchToEnd, withOrchestrator } from "./op.js";
import { execOnTerminal } from "./vm-exec-tty.js";
import { collect, describePublished, publishedPortOf, registerPortCommands } from "./vm-port.js";
import { registerVmSnapshotCommand } from "./snapshot.js";

const stateWord = (state: VmState) => VmState[state].toLowerCase();

function positiveInt(value: string | undefined, flag: string): number {
  if (value === undefined) return 0;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`${flag} must be a positive whole number, got ${value}`);
  return n;
}

const seconds = (value: string | undefined, flag: string) =>
  value === undefined ? undefined : { seconds: BigInt(positiveInt(value, flag)), nanos: 0 };

/** Follows a lifecycle operation to its end and prints the VM it left (or only its id with --no-wait). */
async function follow(
  o: Orchestrator,
  operation: Operation | undefined,
  what: string,
  opts: { json?: boolean; wait?: boolean },
) {
  if (!operation) return;
  const done = await announceAndWatch(o, operation, `${what} ${operation.target}`, opts.wait !== false);
  if (done?.result.case === "vm") printVms([done.result.value], opts.json === true);
}

/** `vm`'s subcommands: create, list, show, start, stop, restart, delete, set, logs, stats, ports, port, ssh, exec, run, pause, resume, snapshot. */
export function registerVmCommands(vm: Command, globals: () => GlobalOptions): void {
  registerCreateCommand(vm, globals);
  registerListShow(vm, globals, {
    listDescription: "all VMs",
    showDescription: "one VM: state, addresses, sizes, image and kernel",
    nameArgument: "VM name",
    fetchAll: async (o) => (await o.client(VmService).listVms({}, o.callOptions())).vms,
    fetchOne: async (o, name) => (await o.client(VmService).getVm({ name }, o.callOptions())).vm,
    print: printVms,
    describe: describeVm,
  });
  registerStartCommand(vm, globals);
  registerStopRestartCommands(vm, globals);
  registerDeleteCommand(vm, globals);
  registerObserveCommands(vm, globals);
  registerRunCommands(vm, globals);
  registerSetCommand(vm, globals);
  registerPortCommands(vm, globals);
  registerPauseCommands(vm, globals);
  registerVmSnapshotCommand(vm, globals);
}

/** `vm pause` and `vm resume`: the guest stops where it is, its memory kept, and goes on from there. */
function registerPauseCommands(vm: Command, globals: () => GlobalOptions): void {
  for (const [command, description] of [
    [
      "pause",
      "stop a running VM's guest where it is (its memory is kept; nothing in it runs or answers) until 'vm resume'",
    ],
    ["resume", "let a paused VM's guest run on from where it was paused"],
  ] as const) {
    vm.command(command)
      .argument("<name>", "VM name")
      .description(description)
      .option("--json", "print the VM as JSON")
      .action(async (name: string, opts: { json?: boolean }) => {
        await withOrchestrator(globals(), async (o) => {
          const client = o.client(VmService);
          const { vm: changed } =
            command === "pause"
              ? await client.pauseVm({ name }, o.callOptions())
              : await client.resumeVm({ name }, o.callOptions());
          if (changed) printVms([changed], opts.json === true);
        });
      });
  }
}

/** `vm create`. */
function registerCreateCommand(vm: Command, globals: () => GlobalOptions): void {
  vm.command("create")
    .description(
      "create a VM from an image and boot it, or (--from) fork one from a snapshot; shows each stage, exits 1 if a stage fails (nothing is left behind)",
    )
    .option(
      "--name <name>",
      "VM name, also its hostname and <name>.vm DNS name (default: a generated one such as brave-otter)",
    )
    .option("--image <image>", "local image or catalog name (default: the configured default image)", "")
    .option(
      "--from <snapshot>",
      "fork: resume from this snapshot's memory instead of booting (its image, kernel and sizes; its own name, IP, MAC, host keys)",
      "",
    )
    .option("--kernel <name>", "kernel to boot (default: the image's, else the host default)", "")
    .option("--vcpu <n>", "virtual CPUs, 1-32 (default: from the config)")
    .option("--memory <mib>", "memory in MiB, 128-262144 (default: from the config)")
    .option("--disk <mib>", "work disk size in MiB (default: from the config)")
    .option("--nat", "let the guest reach the outside network")
    .option(
      "-p, --publish <spec>",
      "publish a host port to the guest, [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp] (repeatable), e.g. -p 8080:80",
      collect,
      [],
    )
    .option("--ssh-timeout <seconds>", "how long to wait for the guest's SSH (default 60)")
    .option("--no-ssh-wait", "succeed once the VMM runs, without waiting for the guest's SSH")
    .option("--no-wait", "print the operation id and return at once")
    .addOption(detachOption())
    .option("--json", "print the VM as JSON when done")
    .action(
      async (opts: {
        publish: string[];
        name?: string;
        image: string;
        from: string;
        kernel: string;
        vcpu?: string;
        memory?: string;
        disk?: string;
        nat?: boolean;
        sshTimeout?: string;
        sshWait: boolean;
        wait: boolean;
        json?: boolean;
      }) => {
        const sshTimeout = seconds(opts.sshTimeout, "--ssh-timeout");
        const request = {
          name: opts.name ?? "",
          image: opts.image,
          kernel: opts.kernel,
          vcpu: positiveInt(opts.vcpu, "--vcpu"),
          memoryMib: positiveInt(opts.memory, "--memory"),
          workDiskMib: BigInt(positiveInt(opts.disk, "--disk")),
          nat: opts.nat === true,
          skipSshWait: !opts.sshWait,
          ...(sshTimeout ? { sshTimeout } : {}),
          publishedPorts: opts.publish.map(publishedPortOf),
          fromSnapshot: opts.from,
        };
        await withOrchestrator(globals(), async (o) => {
          const { operation } = await o.client(VmService).createVm(request, o.callOptions());
          await follow(o, operation, "creating", opts);
        });
      },
    );
}

/** `vm start`. */
function registerStartCommand(vm: Command, globals: () => GlobalOptions): void {
  vm.command("start")
    .argument("<name>", "VM name")
    .description("boot a stopped VM (applying changes made with 'vm set')")
    .option("--ssh-timeout <seconds>", "how long to wait for the guest's SSH (default 60)")
    .option("--no-ssh-wait", "succeed once the VMM runs, without waiting for the guest's SSH")
    .option("--no-wait", "print the operation id and return at once")
    .addOption(detachOption())
    .option("--json", "print the VM as JSON when done")
    .action(async (name: string, opts: { sshTimeout?: string; sshWait: boolean; wait: boolean; json?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const sshTimeout = seconds(opts.sshTimeout, "--ssh-timeout");
        const { operation } = await o
          .client(VmService)
          .startVm({ name, skipSshWait: !opts.sshWait, ...(sshTimeout ? { sshTimeout } : {}) }, o.callOptions());
        await follow(o, operation, "starting", opts);
      });
    });
}

/** `vm stop` and `vm restart`: the same options but --no-ssh-wait, which only restart has. */
function registerStopRestartCommands(vm: Command, globals: () => GlobalOptions): void {
  for (const [command, verb, description] of [
    [
      "stop",
      "stopping",
      "shut a VM down: the guest agent powers the guest off (guest-shutdown, else banger's poweroff), then the " +
        "VMM's power button (QEMU) or Ctrl-Alt-Del (Firecracker), then SIGTERM and SIGKILL to the VMM once the " +
        "timeout is spent; disks are kept",
    ],
    ["restart", "restarting", "stop (if running) and start a VM, applying changes made with 'vm set'"],
  ] as const) {
    const sub = vm.command(command);
    if (command === "restart") {
      sub.option("--no-ssh-wait", "succeed once the VMM runs, without waiting for the guest's SSH");
    } else {
      sub.option("--save", "keep the guest's memory on disk instead of shutting it down: the next start resumes it");
    }
    sub
      .argument("<name>", "VM name")
      .description(description)
      .option("--timeout <seconds>", "how long a graceful shutdown may take before the VMM is killed (default 30)")
      .option("--force", "kill at once, without a graceful shutdown")
      .option("--no-wait", "print the operation id and return at once")
      .addOption(detachOption())
      .option("--json", "print the VM as JSON when done")
      .action(
        async (
          name: string,
          opts: { timeout?: string; force?: boolean; save?: boolean; sshWait?: boolean; wait: boolean; json?: boolean },
        ) => {
          await withOrchestrator(globals(), async (o) => {
            const timeout = seconds(opts.timeout, "--timeout");
            const request = {
              name,
              force: opts.force === true,
              save: opts.save === true,
              skipSshWait: !opts.sshWait,
              ...(timeout ? { timeout } : {}),
            };
            const client = o.client(VmService);
            const { operation } =
              command === "stop"
                ? await client.stopVm(request, o.callOptions())
                : await client.restartVm(request, o.callOptions());
            await follow(o, operation, verb, opts);
          });
        },
      );
  }
}

/** `vm delete`. */
function registerDeleteCommand(vm: Command, globals: () => GlobalOptions): void {
  vm.command("delete")
    .argument("<name>", "VM name")
    .description("stop a VM and remove it with every host resource and file it had (deleting a missing VM succeeds)")
    .action(async (name: string) => {
      await withOrchestrator(globals(), async (o) => {
        const { existed, operation } = await o.client(VmService).deleteVm({ name }, o.callOptions());
        if (!existed) {
          process.stderr.write(`no VM ${name}: nothing to delete\n`);
          return;
        }
        if (operation) await watchToEnd(o, operation.id);
        process.stderr.write(`deleted ${name}\n`);
      });
    });
}

/** `vm set`. */
function registerSetCommand(vm: Command, globals: () => GlobalOptions): void {
  vm.command("set")
    .argument("<name>", "VM name")
    .description("change vcpu or memory (at the next start if it runs), grow the work disk, turn NAT on or off")
    .option("--vcpu <n>", "virtual CPUs, 1-32")
    .option("--memory <mib>", "memory in MiB, 128-262144")
    .option("--disk <mib>", "work disk size in MiB (it can only grow)")
    .option("--nat <on|off>", "NAT to the outside network")
    .option("--json", "print the VM as JSON")
    .action(
      async (name: string, opts: { vcpu?: string; memory?: string; disk?: string; nat?: string; json?: boolean }) => {
        if (opts.nat !== undefined && opts.nat !== "on" && opts.nat !== "off") {
          throw new UsageError(`--nat takes on or off, got ${opts.nat}`);
        }
        const request = {
          name,
          ...(opts.vcpu !== undefined ? { vcpu: positiveInt(opts.vcpu, "--vcpu") } : {}),
          ...(opts.memory !== undefined ? { memoryMib: positiveInt(opts.memory, "--memory") } : {}),
          ...(opts.disk !== undefined ? { workDiskMib: BigInt(positiveInt(opts.disk, "--disk")) } : {}),
          ...(opts.nat !== undefined ? { nat: opts.nat === "on" } : {}),
        };
        await withOrchestrator(globals(), async (o) => {
          const { vm: changed } = await o.client(VmService).setVm(request, o.callOptions());
          if (changed) printVms([changed], opts.json === true);
        });
      },
    );
}

function registerObserveCommands(vm: Command, globals: () => GlobalOptions): void {
  vm.command("logs")
    .argument("<name>", "VM name")
    .description("the guest console (or the VMM's own log), optionally followed as it grows")
    .option("--vmm", "the VMM's log instead of the guest console")
    .option("--tail <lines>", "only the last lines")
    .option("-f, --follow", "keep printing new output (Ctrl-C stops)")
    .action(async (name: string, opts: { vmm?: boolean; tail?: string; follow?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const stream = o.client(VmService).vmLogs(
          {
            name,
            source: opts.vmm ? VmLogSource.VMM : VmLogSource.CONSOLE,
            tailLines: opts.tail === undefined ? 0 : positiveInt(opts.tail, "--tail"),
            follow: opts.follow === true,
          },
          o.callOptions(),
        );
        for await (const { data } of stream) process.stdout.write(data);
      });
    });
  vm.command("stats")
    .argument("<name>", "VM name")
    .description("resource use of a running VM, measured from the host over one second")
    .option("--json", "print JSON")
    .action(async (name: string, opts: { json?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const stats = await o.client(VmService).vmStats({ name }, o.callOptions());
        if (opts.json) {
          process.stdout.write(JSON.stringify(toJson(VmStatsResponseSchema, stats), null, 2) + "\n");
          return;
        }
        const secs = (d: { seconds: bigint; nanos: number } | undefined) =>
          d ? `${(Number(d.seconds) + d.nanos / 1e9).toFixed(1)} s` : "0 s";
        process.stdout.write(
          [
            `cpu:        ${stats.cpuPercent.toFixed(1)}% (${secs(stats.cpuTime)} in all)`,
            `memory:     ${mib(stats.memoryRssBytes)} resident`,
            `root disk:  ${mib(stats.rootDiskUsedBytes)} used on the host`,
            `work disk:  ${mib(stats.workDiskUsedBytes)} used on the host`,
            `uptime:     ${secs(stats.uptime)}`,
          ].join("\n") + "\n",
        );
      });
    });
  vm.command("ports")
    .argument("<name>", "a running VM")
    .description("TCP and UDP sockets listening in the guest (read over SSH)")
    .option("--json", "print JSON")
    .action(async (name: string, opts: { json?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const { ports } = await o.client(VmService).vmPorts({ name }, o.callOptions());
        if (opts.json) return printJsonList(ListeningPortSchema, ports);
        const rows = ports.map((p) => [p.protocol, p.address, String(p.port), p.process]);
        process.stdout.write(renderTable(["PROTO", "ADDRESS", "PORT", "PROCESS"], rows));
      });
    });
  vm.command("ssh")
    .argument("<name>", "VM name")
    .argument("[command...]", "a command to run instead of a login shell")
    .description("log in to a running VM with the system ssh (banger's key; the host key is pinned on first contact)")
    .option("--print", "print the ssh command instead of running it")
    .action(async (name: string, command: string[], opts: { print?: boolean }) => {
      const target = await withOrchestrator(globals(), (o) =>
        o.client(VmService).vmSshTarget({ name }, o.callOptions()),
      );
      const argv = [...target.sshArgv, ...command];
      if (opts.print) {
        process.stdout.write(
          `${argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`)).join(" ")}\n`,
        );
        return;
      }
      // The terminal and the user's environment (ssh-agent, TERM, locale) go to ssh.
      const code = await runAttached(argv, { env: process.env });
      if (code !== 0) throw new PassExitCode(code);
    });
}

/** Runs argv in a running VM, passing its output through; ends with the command's exit code. */
async function execIn(
  o: Orchestrator,
  vm: string,
  argv: string[],
  opts: { timeout?: string; stdin?: boolean },
): Promise<void> {
  // With --stdin, standard input (a pipe or a file) is read to its end and sent whole.
  let stdin = new Uint8Array();
  if (opts.stdin) {
    const parts: Buffer[] = [];
    for await (const chunk of process.stdin) parts.push(chunk as Buffer);
    stdin = Buffer.concat(parts);
  }
  const timeout = seconds(opts.timeout, "--timeout");
  const stream = o
    .client(ExecService)
    .exec({ command: { vm, argv, ...(timeout ? { timeout } : {}) }, stdin }, o.callOptions());
  for await (const { event } of stream) {
    if (event.case === "stdout") process.stdout.write(event.value);
    else if (event.case === "stderr") process.stderr.write(event.value);
    else if (event.case === "exit") {
      const exit = event.value;
      if (exit.timedOut) process.stderr.write(`banger: ${argv[0]} was killed after its timeout\n`);
      const code = exit.code >= 0 ? exit.code : 128 + (exit.signal === "KILL" ? 9 : 15);
      if (code !== 0) throw new PassExitCode(code);
    }
  }
}

function registerRunCommands(vm: Command, globals: () => GlobalOptions): void {
  vm.command("exec")
    .argument("<name>", "a running VM")
    .argument("<command...>", "the command and its arguments (put -- before it)")
    .description("run a command in a running VM over SSH; prints its output and exits with its exit code")
    .option("--timeout <seconds>", "kill the command after this long")
    .option("-i, --stdin", "send this command's standard input (read to its end, at most 4 MiB)")
    .option(
      "-t, --tty",
      "run it on a pseudo-terminal with this terminal's keys, size and TERM (an interactive shell: -t NAME -- sh -l)",
    )
    .action(async (name: string, argv: string[], opts: { timeout?: string; stdin?: boolean; tty?: boolean }) => {
      if (opts.tty && (opts.stdin || opts.timeout !== undefined)) {
        throw new UsageError("vm exec -t takes its input from the terminal: not with --stdin or --timeout");
      }
      await withOrchestrator(globals(), (o) =>
        opts.tty ? execOnTerminal(o, name, argv) : execIn(o, name, argv, opts),
      );
    });
  vm.command("run")
    .argument("<command...>", "the command and its arguments (put -- before it)")
    .description("run a command in a VM, creating (or starting) it first and waiting for its SSH")
    .option("--name <name>", "the VM (default: a new one named run-<random>)")
    .option(
      "--image <image>",
      "image for a VM that has to be created (default: from the config; the built-in tiny when its registry is unreachable)",
      "",
    )
    .option("--ssh-timeout <seconds>", "how long to wait for the guest's SSH when creating or starting it (default 60)")
    .option("--timeout <seconds>", "kill the command after this long")
    .option("-i, --stdin", "send this command's standard input (read to its end, at most 4 MiB)")
    .action(
      async (
        argv: string[],
        opts: { name?: string; image: string; sshTimeout?: string; timeout?: string; stdin?: boolean },
      ) => {
        const name = opts.name ?? `run-${randomBytes(3).toString("hex")}`;
        const sshTimeout = seconds(opts.sshTimeout, "--ssh-timeout");
        await withOrchestrator(globals(), async (o) => {
          const client = o.client(VmService);
          const existing = await client.getVm({ name }, o.callOptions()).catch((error: unknown) => {
            if (error instanceof ConnectError && error.code === Code.NotFound) return undefined;
            throw error;
          });
          if (!existing?.vm) {
            const { operation } = await client.createVm(
              { name, image: opts.image, ...(sshTimeout ? { sshTimeout } : {}) },
              o.callOptions(),
            );
            if (operation) {
              process.stderr.write(`creating ${name} (${operation.id})\n`);
              await watchToEnd(o, operation.id);
            }
          } else if (existing.vm.state === VmState.STOPPED || existing.vm.state === VmState.FAILED) {
            const { operation } = await client.startVm(
              { name, ...(sshTimeout ? { sshTimeout } : {}) },
              o.callOptions(),
            );
            if (operation) {
              process.stderr.write(`starting ${name} (${operation.id})\n`);
              await watchToEnd(o, operation.id);
            }
          }
          await execIn(o, name, argv, opts);
        });
      },
    );
}

/** The lines of `vm show`. */
function describeVm(found: Vm): string[] {
  return [
    `name:      ${found.name} (${found.id})`,
    `state:     ${stateWord(found.state)}${found.pid ? ` (pid ${found.pid})` : ""}`,
    `image:     ${found.image}   kernel: ${found.kernel}`,
    `address:   ${found.guestIp} (${found.name}.vm)  mac ${found.mac}  vsock cid ${found.vsockCid}`,
    `size:      ${found.vcpu} vcpu, ${found.memoryMib} MiB memory, ${found.workDiskMib} MiB work disk`,
    `nat:       ${found.nat ? "on" : "off"}`,
    ...describePublished(found),
    ...(found.agentHealth === AgentHealth.UNSPECIFIED ? [] : [`agent:     ${agentWord(found)}`]),
    ...(found.savedStateTime
      ? [
          `saved:     ${timestampDate(found.savedStateTime).toISOString()} (memory saved: the next start resumes from it)`,
        ]
      : []),
    ...(found.pendingChanges.length > 0 ? [`pending:   ${found.pendingChanges.join(", ")} (at next start)`] : []),
    ...(found.lastError ? [`error:     ${found.lastError}`] : []),
  ];
}

function printVms(vms: readonly Vm[], json: boolean): void {
  if (json) return printJsonList(VmSchema, vms);
  const rows = vms.map((v) => [
    v.name,
    stateWord(v.state),
    v.image,
    v.guestIp,
    `${v.vcpu}`,
    `${v.memoryMib}`,
    v.agentHealth === AgentHealth.UNSPECIFIED ? "-" : (agentWord(v).split(" ")[0] ?? ""),
  ]);
  process.stdout.write(renderTable(["NAME", "STATE", "IMAGE", "IP", "VCPU", "MEMORY", "AGENT"], rows));
}

/** The guest agent's health in words. */
function agentWord(vm: Vm): string {
  switch (vm.agentHealth) {
    case AgentHealth.OK:
      return `ok (qemu-ga ${vm.agentVersion})`;
    case AgentHealth.UNREACHABLE:
      return "unreachable (no answer in 1 s)";
    case AgentHealth.NONE:
      return "none (the kernel's initrd has no guest kit: banger kernel initramfs NAME)";
    default:
      return "-";
  }
}
