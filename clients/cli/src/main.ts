import { BANGER_VERSION } from "@banger/common";
import { Command, CommanderError } from "commander";
import { registerDaemonCommands } from "./commands/daemon.js";
import { registerDevCommands } from "./commands/dev.js";
import { registerDoctorCommand } from "./commands/doctor.js";
import { registerPruneCommand } from "./commands/prune.js";
import { registerImageCommands } from "./commands/image.js";
import { registerKernelCommands } from "./commands/kernel.js";
import { registerOpCommands } from "./commands/op.js";
import { registerSystemCommands } from "./commands/system.js";
import { registerVmCommands } from "./commands/vm.js";
import { registerWorkspaceCommands } from "./commands/workspace.js";
import type { GlobalOptions } from "./context.js";
import { reportError } from "./errors.js";

/** The `banger` command tree. Later commands slot in with one `registerXCommands(program)` each. */
export function buildProgram(): Command {
  const program = new Command("banger")
    .description("disposable Firecracker microVMs on your own Linux machine")
    .version(BANGER_VERSION, "-V, --version")
    .option(
      "--socket <path>",
      "orchestrator socket (default: $BANGER_SOCKET, else $BANGER_RUNTIME_DIR/orchestrator.sock, else the first that " +
        "exists of /run/banger/orchestrator.sock, /run/banger-dev/<uid>/orchestrator.sock and " +
        "$XDG_RUNTIME_DIR/banger-dev/orchestrator.sock (dev up's), else /run/banger/orchestrator.sock)",
    )
    .showHelpAfterError()
    .exitOverride();
  const globals = () => program.opts<GlobalOptions>();
  registerDaemonCommands(program, globals);
  registerDevCommands(program);
  registerDoctorCommand(program, globals);
  registerImageCommands(program, globals);
  registerKernelCommands(program, globals);
  registerOpCommands(program, globals);
  registerPruneCommand(program, globals);
  registerSystemCommands(program);
  registerVmCommands(program, globals);
  registerWorkspaceCommands(program, globals);
  program.commands.forEach(function override(cmd: Command): void {
    cmd.exitOverride();
    cmd.commands.forEach(override);
  });
  return program;
}

export async function main(argv: readonly string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv, { from: "user" });
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and --version end with exit code 0; every other commander error is a usage error.
      return error.exitCode === 0 ? 0 : 2;
    }
    return reportError(error);
  }
}
