import { BANGER_VERSION } from "@banger/common/version";
import { Command, CommanderError } from "commander";
import type { GlobalOptions } from "./context.js";

/** Fills in a top-level command: its subcommands, or a leaf's action. */
type Register = (command: Command, globals: () => GlobalOptions) => void;

/**
 * A top-level command as `banger --help` lists it (name, description, a leaf's options), and the module that
 * fills it in, loaded only when the command runs: `banger daemon status` loads neither the VM commands nor
 * their protos.
 */
interface TopLevelCommand {
  readonly name: string;
  readonly description: string;
  readonly options?: readonly (readonly [flags: string, description: string])[];
  readonly load: () => Promise<Register>;
}

const COMMANDS: readonly TopLevelCommand[] = [
  {
    name: "completion",
    description:
      "print a shell completion script: subcommands, options, and the names of VMs, images, kernels and operations " +
      "(asked of bangerd with a short deadline; nothing when it is down). " +
      "bash: source <(banger completion bash); zsh: source <(banger completion zsh); fish: banger completion fish | source",
    load: async () => (await import("./commands/completion.js")).registerCompletionCommand,
  },
  {
    name: "daemon",
    description: "inspect banger's three services",
    load: async () => (await import("./commands/daemon.js")).registerDaemonCommands,
  },
  {
    name: "dev",
    description: "run banger from this checkout (development)",
    load: async () => (await import("./commands/dev.js")).registerDevCommands,
  },
  {
    name: "doctor",
    description:
      "check this machine and banger's setup: /dev/kvm, the VMM and its version, the three services and their versions, " +
      "the helper's privileges, host features (tun, bridge, loop, device-mapper), e2fsprogs, the bridge's subnet, " +
      "the default image and kernel, the SSH key, free space, then each feature's own checks (work disk, NAT, DNS). " +
      "Each check is ok, WARN (works, not as well as it could) or FAIL (cannot work until fixed), with a hint; " +
      "changes nothing; exits 1 when any check fails",
    options: [["--json", "print JSON instead of a table"]],
    load: async () => (await import("./commands/doctor.js")).registerDoctorCommand,
  },
  {
    name: "image",
    description: "root filesystem images: pull, register, promote, list, show, catalog, delete",
    load: async () => (await import("./commands/image.js")).registerImageCommands,
  },
  {
    name: "kernel",
    description: "guest kernels: import, build an initramfs, list, show, delete, set the default",
    load: async () => (await import("./commands/kernel.js")).registerKernelCommands,
  },
  {
    name: "op",
    description: "long-running operations (create, pull, …): list, show, watch, cancel",
    load: async () => (await import("./commands/op.js")).registerOpCommands,
  },
  {
    name: "prune",
    description:
      "housekeeping: removes the operations that ended over operations.retention_days ago (config, default 30; " +
      "bangerd also does this at start and daily) and every blob and built image in the image puller's cache " +
      "that no pull is using (the next pull downloads again). With --all, also lists the images no VM uses and " +
      "the kernels no image or VM uses (never the default kernel), and deletes them only with --force",
    options: [
      ["--all", "also the images and kernels nothing uses: listed, deleted only with --force"],
      ["--force", "with --all: delete those images and kernels"],
      ["--json", "print JSON instead of text"],
    ],
    load: async () => (await import("./commands/prune.js")).registerPruneCommand,
  },
  {
    name: "snapshot",
    description: "snapshots of running VMs (taken with 'vm snapshot NAME --as SNAP'): list, show, delete",
    load: async () => (await import("./commands/snapshot.js")).registerSnapshotCommands,
  },
  {
    name: "system",
    description:
      "run banger as three hardened systemd services (needs systemd as PID 1; install, restart, uninstall need root)",
    load: async () => (await import("./commands/system.js")).registerSystemCommands,
  },
  {
    name: "top",
    description:
      "a live full-screen view: the VMs (state, agent health, IP, vCPU, memory, CPU %, resident memory, disk " +
      "allocated), bars for the CPU and RAM the running VMs reserve against the host's and the disk their files " +
      "allocate against the state filesystem, and the running and recent operations with their stages. Keys: " +
      "↑↓/j k select, s start, x stop, r restart, d delete (asks y/n), l logs -f, e exec a command (or, with none, a shell), c ssh, q quit. " +
      "Refreshes every --interval seconds (VmStats measures each running VM over one second) and follows running " +
      "operations live. With TERM=dumb, or stdout not a terminal, prints one plain snapshot and exits 0",
    options: [
      ["--interval <seconds>", "seconds between refreshes, 1-3600 (default 2)"],
      ["--once", "print one plain snapshot and exit, even on a terminal"],
    ],
    load: async () => (await import("./commands/top.js")).registerTopCommand,
  },
  {
    name: "vm",
    description:
      "virtual machines: create, list, show, start, stop, restart, delete, set, logs, stats, ports, ssh, exec, run, pause, resume",
    load: async () => (await import("./commands/vm.js")).registerVmCommands,
  },
  {
    name: "workspace",
    description: "copy a host git repository into a VM (prepare) and bring the guest's changes back (export)",
    load: async () => (await import("./commands/workspace.js")).registerWorkspaceCommands,
  },
];

/** Usage errors end with exit code 2 instead of commander's process.exit. */
function overrideExits(command: Command): void {
  command.exitOverride();
  command.commands.forEach(overrideExits);
}

/**
 * The `banger` command tree: every top-level command declared, each filled in by its module by `fillIn`, which
 * commander's preSubcommand hook calls just before the command runs.
 */
export function buildProgram(): { program: Command; fillIn: (name: string) => Promise<void> } {
  const program = new Command("banger")
    .description("disposable Firecracker microVMs on your own Linux machine")
    .version(BANGER_VERSION, "-V, --version")
    .option(
      "--socket <path>",
      "orchestrator socket (default: $BANGER_SOCKET, else $BANGER_RUNTIME_DIR/orchestrator.sock, else the first that " +
        "exists of /run/banger/orchestrator.sock, /run/banger-dev/<uid>/orchestrator.sock and " +
        "$XDG_RUNTIME_DIR/banger-dev/orchestrator.sock (dev up's), else /run/banger/orchestrator.sock)",
    )
    .option(
      "--timeout <duration>",
      "how long a call may wait for bangerd (30s, 500ms, 2m): each request's deadline (default 30s; a few slow " +
        "ones longer), and for a stream (watching an operation, logs --follow, exec) how long bangerd may leave a " +
        "keepalive unanswered. Anywhere before --, but after vm stop, restart or run it is their own --timeout",
    )
    .enablePositionalOptions()
    .showHelpAfterError()
    .exitOverride();
  const globals = () => program.opts<GlobalOptions>();
  const declared = new Map<string, { command: Command; load: TopLevelCommand["load"] }>();
  for (const { name, description, options = [], load } of COMMANDS) {
    const command = program.command(name).description(description);
    for (const [flags, text] of options) command.option(flags, text);
    declared.set(name, { command, load });
  }
  const filled = new Set<string>();
  const fillIn = async (name: string) => {
    const entry = declared.get(name);
    if (entry === undefined || filled.has(name)) return;
    filled.add(name);
    (await entry.load())(entry.command, globals);
    overrideExits(entry.command);
  };
  program.hook("preSubcommand", (_program, command) => fillIn(command.name()));
  overrideExits(program);
  return { program, fillIn };
}

/**
 * Global options are the program's, read before the command (enablePositionalOptions: `vm stop --timeout` is
 * stop's own). After the command (up to `--`) `--socket` is still taken, as it always was, and `--timeout`
 * where the command has no --timeout of its own: both moved to the front.
 */
export function hoistGlobals(argv: readonly string[], commandHasTimeout: boolean): string[] {
  const global = (arg: string) =>
    arg === "--socket" ||
    arg.startsWith("--socket=") ||
    (!commandHasTimeout && (arg === "--timeout" || arg.startsWith("--timeout=")));
  const front: string[] = [];
  const rest: string[] = [];
  let command = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (arg === "--") {
      rest.push(...argv.slice(i));
      break;
    }
    const takesValue = arg === "--socket" || arg === "--timeout";
    const into = command && global(arg) ? front : rest;
    into.push(arg);
    if (takesValue && i + 1 < argv.length && (into === front || !command)) into.push(argv[++i] ?? "");
    else if (!arg.startsWith("-")) command = true;
  }
  return [...front, ...rest];
}

/** The command `argv` names (its words, as far as they name subcommands), once its top-level one is filled in. */
function namedCommand(program: Command, argv: readonly string[]): Command {
  let command = program;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (arg === "--") break;
    if (arg === "--socket" || arg === "--timeout") i++;
    if (arg.startsWith("-")) continue;
    const sub = command.commands.find((c) => c.name() === arg || c.aliases().includes(arg));
    if (sub === undefined) break;
    command = sub;
  }
  return command;
}

export async function main(argv: readonly string[]): Promise<number> {
  try {
    const { program, fillIn } = buildProgram();
    // The completion scripts' call: hidden, never a command of its own (it must not show in help or complete itself).
    if (argv[0] === "__complete") {
      await (await import("./completion.js")).complete(program, fillIn, argv.slice(1));
      return 0;
    }
    // `banger help <command>` prints the command's help without running it (no preSubcommand hook): with `help`
    // anywhere in the arguments, every command is filled in first, as if none were lazy.
    if (argv.includes("help")) await Promise.all(COMMANDS.map(({ name }) => fillIn(name)));
    const top = argv.find((arg, i) => !arg.startsWith("-") && !["--socket", "--timeout"].includes(argv[i - 1] ?? ""));
    if (top !== undefined) await fillIn(top);
    const own = namedCommand(program, argv).options.some((option) => option.long === "--timeout");
    await program.parseAsync(hoistGlobals(argv, own), { from: "user" });
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and --version end with exit code 0; every other commander error is a usage error.
      return error.exitCode === 0 ? 0 : 2;
    }
    // Loaded only now: it needs connect's errors, which `banger --version` has no use for.
    const { reportError } = await import("./errors.js");
    return reportError(error);
  }
}
