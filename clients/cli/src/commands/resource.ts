import type { Command } from "commander";
import type { Orchestrator } from "../client.js";
import type { GlobalOptions } from "../context.js";
import { withOrchestrator } from "./op.js";

/**
 * The commands every kind of resource (VMs, images, kernels) has alike: `list`, `show <name>`
 * and, for images and kernels, `delete <name>`.
 */

/** What `list` and `show` of one kind of resource (VMs, images, kernels) differ in. */
export interface ListShowSpec<T> {
  /** `list`'s description. */
  readonly listDescription: string;
  /** `show`'s description. */
  readonly showDescription: string;
  /** The description of `show`'s `<name>` argument. */
  readonly nameArgument: string;
  readonly fetchAll: (o: Orchestrator) => Promise<readonly T[]>;
  /** One by name; undefined prints nothing (the orchestrator answers NotFound for a missing one). */
  readonly fetchOne: (o: Orchestrator, name: string) => Promise<T | undefined>;
  /** Prints resources as a table, or with --json as a JSON array. */
  readonly print: (items: readonly T[], json: boolean) => void;
  /** The lines `show` prints without --json. */
  readonly describe: (item: T) => readonly string[];
}

/** `<parent> list` and `<parent> show <name>`, both with --json. */
export function registerListShow<T>(parent: Command, globals: () => GlobalOptions, spec: ListShowSpec<T>): void {
  parent
    .command("list")
    .description(spec.listDescription)
    .option("--json", "print JSON")
    .action(async (opts: { json?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        spec.print(await spec.fetchAll(o), opts.json === true);
      });
    });
  parent
    .command("show")
    .argument("<name>", spec.nameArgument)
    .description(spec.showDescription)
    .option("--json", "print JSON")
    .action(async (name: string, opts: { json?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const found = await spec.fetchOne(o, name);
        if (!found) return;
        if (opts.json) return spec.print([found], true);
        process.stdout.write(spec.describe(found).join("\n") + "\n");
      });
    });
}

/** What `delete` of one kind of resource differs in. */
export interface DeleteSpec {
  /** The kind, as `no <noun> NAME: nothing to delete` says it. */
  readonly noun: string;
  readonly description: string;
  /** Deletes it by name; whether it existed. */
  readonly remove: (o: Orchestrator, name: string) => Promise<boolean>;
}

/** `<parent> delete <name>`: deleting a missing one succeeds, and says so. */
export function registerDelete(parent: Command, globals: () => GlobalOptions, spec: DeleteSpec): void {
  parent
    .command("delete")
    .argument("<name>", `${spec.noun} name`)
    .description(spec.description)
    .action(async (name: string) => {
      await withOrchestrator(globals(), async (o) => {
        const existed = await spec.remove(o, name);
        process.stderr.write(existed ? `deleted ${name}\n` : `no ${spec.noun} ${name}: nothing to delete\n`);
      });
    });
}
