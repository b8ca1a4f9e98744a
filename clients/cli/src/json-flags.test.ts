import type { Command } from "commander";
import { describe, expect, it } from "vitest";
import { buildProgram } from "./main.js";

/** Commands that report state rather than change it: each must print JSON with --json. */
const REPORTS = /^(list|ls|show|status|stats|ports|catalog|doctor)$/;

function* walk(command: Command, path: string[] = []): Generator<[string, Command]> {
  for (const sub of command.commands) {
    const here = [...path, sub.name()];
    yield [here.join(" "), sub];
    yield* walk(sub, here);
  }
}

describe("--json", () => {
  it("every list, show and status command takes it, and its --help says so", async () => {
    const { program, fillIn } = buildProgram();
    await Promise.all(program.commands.map((c) => fillIn(c.name())));
    const reports = [...walk(program)].filter(([, c]) => REPORTS.test(c.name()) && c.commands.length === 0);
    // The walk found the commands (a renamed tree would otherwise pass with nothing checked).
    expect(reports.map(([path]) => path)).toEqual(
      expect.arrayContaining(["vm list", "vm show", "vm stats", "image catalog", "op show", "daemon status", "doctor"]),
    );
    const without = reports.filter(([, c]) => !c.options.some((o) => o.long === "--json")).map(([path]) => path);
    expect(without).toEqual([]);
    for (const [path, command] of reports) {
      expect(command.helpInformation(), path).toMatch(/--json\s+print JSON/);
    }
  });
});
