import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHostRunner, type Runner } from "@banger/common";
import { EXT4_TOOLS, requireTools } from "@banger/common/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createCleanImageCheck } from "./clean-image.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "banger-clean-image-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** The real runner, counting the e2fsck runs. */
function countingRunner(): Runner & { runs: number } {
  const real = createHostRunner();
  const runner = {
    runs: 0,
    run: (argv: readonly string[], options?: Parameters<Runner["run"]>[1]) => {
      runner.runs++;
      return real.run(argv, options);
    },
  };
  return runner;
}

describe.skipIf(requireTools("clean image check", EXT4_TOOLS).length > 0)("the clean image check", () => {
  it("checks an image once for every create while the file stays as it is, and again once it changed", async () => {
    const image = join(dir, "rootfs.ext4");
    execFileSync("mkfs.ext4", ["-q", "-F", image, "8M"]);
    const runner = countingRunner();
    const clean = createCleanImageCheck(runner);
    const identities = await Promise.all([clean(image), clean(image), clean(image)]);
    expect(identities[0]).toMatch(/^\d+:\d+:\d+:\d+:\d+$/);
    expect(new Set(identities).size).toBe(1);
    expect(runner.runs).toBe(1);
    // Changed (its mtime and ctime): asked again, and no longer an ext4 e2fsck finds clean.
    writeFileSync(image, Buffer.alloc(8 * 1024 * 1024));
    expect(await clean(image)).toBeUndefined();
    expect(runner.runs).toBe(2);
  });

  it("does not call an image with errors clean, nor one that is missing", async () => {
    const image = join(dir, "rootfs.ext4");
    execFileSync("mkfs.ext4", ["-q", "-F", image, "8M"]);
    // The root directory's link count made wrong: e2fsck -fn reports it (and fixes nothing).
    execFileSync("debugfs", ["-w", "-R", "sif <2> links_count 9", image], { stdio: "ignore" });
    const clean = createCleanImageCheck(createHostRunner());
    expect(await clean(image)).toBeUndefined();
    expect(await clean(join(dir, "missing.ext4"))).toBeUndefined();
  });
});
