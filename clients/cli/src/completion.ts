/**
 * Shell completion. `banger completion bash|zsh|fish` prints a small script that hands the words typed so far to
 * the hidden `banger __complete -- WORD…` and offers what it prints, one candidate a line. The candidates come from
 * walking the command tree commander runs (so they follow every command and option added, with nothing generated
 * to go stale) and, for an argument or option that names a VM, image, kernel, snapshot or operation, from the orchestrator
 * with a short deadline: a daemon that is down or slow completes nothing rather than holding the shell.
 */
import type { Argument, Command, Option } from "commander";
import type { GlobalOptions } from "./context.js";

export const SHELLS = ["bash", "zsh", "fish"] as const;
export type Shell = (typeof SHELLS)[number];

/** What a value names: looked up in the orchestrator. */
export type ResourceKind = "vm" | "image" | "kernel" | "operation" | "snapshot";

/** How long the orchestrator may take to list names before the completion gives up (prints nothing). */
export const LOOKUP_DEADLINE_MS = 1500;

/** The scripts: each hands the words before the cursor and the one under it to `banger __complete`. */
export function completionScript(shell: Shell): string {
  switch (shell) {
    case "bash":
      return [
        "# banger completion for bash: source <(banger completion bash)",
        "_banger_complete() {",
        "  local IFS=$'\\n'",
        '  COMPREPLY=($(banger __complete -- "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))',
        "}",
        "complete -o default -F _banger_complete banger",
        "",
      ].join("\n");
    case "zsh":
      return [
        "#compdef banger",
        "# banger completion for zsh: source <(banger completion zsh) (after compinit)",
        "_banger() {",
        "  local -a candidates",
        '  candidates=("${(@f)$(banger __complete -- "${(@)words[2,CURRENT]}" 2>/dev/null)}")',
        "  candidates=(${candidates:#})",
        "  (( ${#candidates} )) && compadd -- $candidates",
        "}",
        'if [[ "${funcstack[1]}" = _banger ]]; then',
        '  _banger "$@"',
        "else",
        "  compdef _banger banger",
        "fi",
        "",
      ].join("\n");
    case "fish":
      return [
        "# banger completion for fish: banger completion fish | source",
        "function __banger_complete",
        "    set -l words (commandline -opc) (commandline -ct)",
        "    banger __complete -- $words[2..-1] 2>/dev/null",
        "end",
        "complete -c banger -f -a '(__banger_complete)'",
        "",
      ].join("\n");
  }
}

/** What the word under the cursor is, found by walking the command tree over the words before it. */
export type CompletionTarget =
  | { readonly kind: "words"; readonly words: readonly string[] }
  | { readonly kind: "resource"; readonly resource: ResourceKind }
  | { readonly kind: "nothing" };

/** The resource an argument names, from its name and description ("VM name", "a running VM", "kernel name"…). */
export function argumentResource(argument: Argument): ResourceKind | undefined {
  const name = argument.name();
  if (name === "vm") return "vm";
  if (name === "op-id") return "operation";
  if (name !== "name") return undefined;
  const text = argument.description;
  if (/^(VM name|an? (running|stopped) VM)$/.test(text)) return "vm";
  if (text === "image name") return "image";
  if (text === "kernel name") return "kernel";
  if (text === "snapshot name") return "snapshot";
  return undefined;
}

/** The resource an option's value names. */
function optionResource(command: Command, option: Option): ResourceKind | undefined {
  if (option.long === "--image") return "image";
  if (option.long === "--kernel") return "kernel";
  if (option.long === "--target") return "vm";
  if (option.long === "--from") return "snapshot";
  // `vm run --name`: an existing VM, or a new one.
  if (option.long === "--name" && command.name() === "run") return "vm";
  return undefined;
}

const takesValue = (option: Option) => option.required || option.optional;

function findOption(path: readonly Command[], flag: string): Option | undefined {
  for (const command of [...path].reverse()) {
    const found = command.options.find((o) => o.long === flag || o.short === flag);
    if (found) return found;
  }
  return undefined;
}

/**
 * Walks `program` over `before` (the words typed before the cursor, without `banger`): subcommands, options and
 * their values, positional arguments. `fillIn` fills in a top-level command as the CLI does before it runs.
 */
export async function completionTarget(
  program: Command,
  fillIn: (name: string) => Promise<void>,
  before: readonly string[],
  current: string,
): Promise<CompletionTarget> {
  const path: Command[] = [program];
  let command = program;
  let positionals = 0;
  let valueOf: Option | undefined;
  let afterDashes = false;
  for (const word of before) {
    if (valueOf) {
      valueOf = undefined;
      continue;
    }
    if (!afterDashes && word === "--") {
      afterDashes = true;
      continue;
    }
    if (!afterDashes && word.startsWith("-") && word.length > 1) {
      const option = findOption(path, word.split("=")[0] ?? word);
      if (option && takesValue(option) && !word.includes("=")) valueOf = option;
      continue;
    }
    const sub =
      positionals === 0 ? command.commands.find((c) => c.name() === word || c.aliases().includes(word)) : undefined;
    if (sub) {
      if (command === program) await fillIn(sub.name());
      command = sub;
      path.push(sub);
      continue;
    }
    positionals += 1;
  }
  if (valueOf) {
    const resource = optionResource(command, valueOf);
    return resource ? { kind: "resource", resource } : { kind: "nothing" };
  }
  if (!afterDashes && current.startsWith("-")) {
    // The command's own options, and the global ones but --version (only `banger --version` takes it).
    const options = [...command.options, ...(command === program ? [] : program.options)];
    const flags = options
      .filter((o) => !o.hidden && (command === program || o.long !== "--version"))
      .flatMap((o) => (o.long ? [o.long] : []));
    return { kind: "words", words: [...new Set([...flags, "--help"])] };
  }
  if (afterDashes) return { kind: "nothing" };
  const subcommands = command.commands.map((c) => c.name());
  if (subcommands.length > 0 && positionals === 0) return { kind: "words", words: subcommands };
  const args = command.registeredArguments;
  const argument = args[Math.min(positionals, args.length - 1)];
  if (argument === undefined || (positionals >= args.length && !argument.variadic)) return { kind: "nothing" };
  const resource = argumentResource(argument);
  return resource ? { kind: "resource", resource } : { kind: "nothing" };
}

/** The names of one kind of resource, from the orchestrator within LOOKUP_DEADLINE_MS; none when it cannot say. */
export async function resourceNames(globals: GlobalOptions, resource: ResourceKind): Promise<string[]> {
  const { connectOrchestrator } = await import("./client.js");
  const o = connectOrchestrator(globals);
  const options = o.callOptions({ timeoutMs: LOOKUP_DEADLINE_MS });
  try {
    switch (resource) {
      case "vm": {
        const { VmService } = await import("@banger/gen/banger/v1/vm_pb.js");
        return (await o.client(VmService).listVms({}, options)).vms.map((v) => v.name);
      }
      case "image": {
        const { ImageService } = await import("@banger/gen/banger/v1/image_pb.js");
        const client = o.client(ImageService);
        const [local, catalog] = await Promise.all([
          client.listImages({}, options),
          client.listCatalog({}, options).catch(() => ({ entries: [] })),
        ]);
        return [...new Set([...local.images.map((i) => i.name), ...catalog.entries.map((e) => e.name)])];
      }
      case "kernel": {
        const { KernelService } = await import("@banger/gen/banger/v1/kernel_pb.js");
        return (await o.client(KernelService).listKernels({}, options)).kernels.map((k) => k.name);
      }
      case "snapshot": {
        const { VmService } = await import("@banger/gen/banger/v1/vm_pb.js");
        return (await o.client(VmService).listSnapshots({}, options)).snapshots.map((x) => x.name);
      }
      case "operation": {
        const { OperationService } = await import("@banger/gen/banger/v1/operation_pb.js");
        return (await o.client(OperationService).listOperations({ limit: 50 }, options)).operations.map((x) => x.id);
      }
    }
  } catch {
    return []; // down, slow or refusing: complete nothing
  } finally {
    o.close();
  }
}

/** `banger __complete -- WORD…`: the candidates for the last word, one a line. */
export async function complete(
  program: Command,
  fillIn: (name: string) => Promise<void>,
  words: readonly string[],
): Promise<void> {
  const typed = words[0] === "--" ? words.slice(1) : words;
  const current = typed.at(-1) ?? "";
  const before = typed.slice(0, -1);
  const target = await completionTarget(program, fillIn, before, current);
  let candidates: readonly string[] = [];
  if (target.kind === "words") candidates = target.words;
  if (target.kind === "resource") candidates = await resourceNames(globalsOf(before), target.resource);
  const matching = candidates.filter((c) => c.startsWith(current));
  if (matching.length > 0) process.stdout.write(matching.join("\n") + "\n");
}

/** `--socket` as typed before the cursor: the names come from the orchestrator the command would talk to. */
function globalsOf(words: readonly string[]): GlobalOptions {
  for (const [i, word] of words.entries()) {
    if (word.startsWith("--socket=")) return { socket: word.slice("--socket=".length) };
    const next = words[i + 1];
    if (word === "--socket" && next !== undefined) return { socket: next };
  }
  return {};
}
