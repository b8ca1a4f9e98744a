import { Argument, type Command } from "commander";
import { SHELLS, completionScript, type Shell } from "../completion.js";

/** `completion bash|zsh|fish`: main.ts declares the command with its description. */
export function registerCompletionCommand(completion: Command): void {
  completion.addArgument(new Argument("<shell>", "the shell").choices(SHELLS)).action((shell: Shell) => {
    process.stdout.write(completionScript(shell));
  });
}
