import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { describe, expect, it } from "vitest";
import { SHELLS, completionScript, completionTarget, type CompletionTarget } from "./completion.js";
import { buildProgram } from "./main.js";

const target = async (line: string): Promise<CompletionTarget> => {
  const { program, fillIn } = buildProgram();
  const words = line.split(" ");
  return completionTarget(program, fillIn, words.slice(0, -1), words.at(-1) ?? "");
};
const words = async (line: string) => {
  const found = await target(line);
  return found.kind === "words" ? found.words : [];
};

describe("completion's walk of the command tree", () => {
  it("offers the top-level commands, then a command's subcommands", async () => {
    expect(await words("")).toEqual(expect.arrayContaining(["vm", "image", "kernel", "op", "completion", "doctor"]));
    expect(await words("vm ")).toEqual(expect.arrayContaining(["create", "list", "show", "start", "stop", "ssh"]));
    expect(await words("image ")).toEqual(expect.arrayContaining(["pull", "catalog", "list"]));
  });

  it("offers a command's options and the global ones after options and their values", async () => {
    const flags = await words("--socket /x image pull debian -");
    expect(flags).toEqual(expect.arrayContaining(["--replace", "--min-rootfs", "--json", "--socket", "--help"]));
    expect(flags).not.toContain("--version");
    expect(await words("vm create --vcpu 2 -")).toEqual(expect.arrayContaining(["--image", "--name", "--nat"]));
  });

  it("knows which arguments and option values name a VM, an image, a kernel or an operation", async () => {
    expect(await target("vm show ")).toEqual({ kind: "resource", resource: "vm" });
    expect(await target("vm ssh web ")).toEqual({ kind: "nothing" }); // the command to run
    expect(await target("workspace prepare ")).toEqual({ kind: "resource", resource: "vm" });
    expect(await target("image promote ")).toEqual({ kind: "resource", resource: "vm" });
    expect(await target("image promote web ")).toEqual({ kind: "nothing" }); // a new image's name
    expect(await target("image delete ")).toEqual({ kind: "resource", resource: "image" });
    expect(await target("kernel set-default ")).toEqual({ kind: "resource", resource: "kernel" });
    expect(await target("op watch ")).toEqual({ kind: "resource", resource: "operation" });
    expect(await target("snapshot show ")).toEqual({ kind: "resource", resource: "snapshot" });
    expect(await target("snapshot delete ")).toEqual({ kind: "resource", resource: "snapshot" });
    expect(await target("vm snapshot ")).toEqual({ kind: "resource", resource: "vm" });
    expect(await target("vm create --image ")).toEqual({ kind: "resource", resource: "image" });
    expect(await target("vm create --from ")).toEqual({ kind: "resource", resource: "snapshot" });
    expect(await target("vm create --kernel ")).toEqual({ kind: "resource", resource: "kernel" });
    expect(await target("vm create --vcpu ")).toEqual({ kind: "nothing" });
    expect(await target("image pull ")).toEqual({ kind: "nothing" });
  });
});

describe("completion scripts", () => {
  for (const shell of SHELLS) {
    const tool = shell === "bash" || requireTools(`the ${shell} completion script`, [shell]).length === 0;
    it.skipIf(!tool)(`the ${shell} script parses (${shell} -n)`, () => {
      const dir = mkdtempSync(join(tmpdir(), "banger-completion-"));
      try {
        const script = join(dir, `banger.${shell}`);
        writeFileSync(script, completionScript(shell));
        const checked = spawnSync(shell, ["-n", script], { encoding: "utf8" });
        expect([checked.status, checked.stderr]).toEqual([0, ""]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
