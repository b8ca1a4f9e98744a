/**
 * What the root helper loads from packages/common: only the modules it runs, through common's
 * subpath entry points (never the root index, which re-exports the registry and credential-helper
 * code the puller and orchestrator use). Measured on the built helper by scripts/loaded-modules.mjs.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
const ROOT = resolve(import.meta.dirname, "../..");

function loadedModules(entry: string): string[] {
  const script = join(ROOT, "scripts/loaded-modules.mjs");
  // An unknown option: the helper exits in parseArgs, after its whole static import graph loaded.
  const out = execFileSync(process.execPath, [script, entry, "--no-such-option"], { cwd: ROOT, encoding: "utf8" });
  return out.split("\n").filter(Boolean);
}

describe("the privileged helper's imports", () => {
  it("loads from common only the modules it runs: no registry, credential helper or root index", () => {
    const common = loadedModules("services/privileged/dist/main.js")
      .filter((file) => file.startsWith("packages/common/dist/"))
      .map((file) => file.slice("packages/common/dist/".length));
    expect(common).toContain("errors.js");
    expect(common).toContain("service-main.js");
    expect(common.filter((file) => /^(index\.js|registry\/|copy-file|static-busybox|unix-client)/.test(file))).toEqual(
      [],
    );
  });

  it("and the bundle the unit runs holds no more of common than that", () => {
    const inputs = JSON.parse(
      readFileSync(join(ROOT, "services/privileged/dist/bundle/inputs.json"), "utf8"),
    ) as string[];
    const common = inputs.filter((file) => file.startsWith("packages/common/dist/"));
    expect(common).toContain("packages/common/dist/service-main.js");
    expect(
      common.filter((file) => /dist\/(index\.js|registry\/|copy-file|static-busybox|unix-client)/.test(file)),
    ).toEqual([]);
    expect(
      inputs.filter((file) => file.startsWith("services/image-puller/") || file.startsWith("services/orchestrator/")),
    ).toEqual([]);
  });
});
