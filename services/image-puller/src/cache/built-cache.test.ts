import { execFileSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { BuiltCache } from "../core/ports.js";
import { createBuiltCache } from "./built-cache.js";

const KEY = {
  manifestDigest: `sha256:${"1".repeat(64)}`,
  minRootfsMib: 0,
  headroomPercent: 0,
  inodeMarginPercent: 0,
  skipWorkSeed: false,
};

describe.skipIf(requireTools("the built-image cache", ["mkfs.ext4", "e2fsck"]).length > 0)("built-image cache", () => {
  let work: string;
  let cache: BuiltCache;
  beforeEach(() => {
    work = mkdtempSync(join(tmpdir(), "banger-built-"));
    cache = createBuiltCache(join(work, "built"));
  });
  afterEach(() => rmSync(work, { recursive: true, force: true }));

  /** A staging directory with a 64 MiB ext4 image holding little data (mostly holes), as the puller builds. */
  function staged(name: string): string {
    const dir = join(work, name);
    mkdirSync(dir);
    execFileSync("mkfs.ext4", ["-q", "-F", "-E", "lazy_itable_init=1", join(dir, "rootfs.ext4"), "64M"]);
    execFileSync("sh", ["-c", `head -c 300000 /dev/urandom > ${dir}/manifest.json`]);
    return dir;
  }

  it("keeps a build from open files while the staging directory is renamed, and restores sparse single-link copies", async () => {
    const staging = staged("staging");
    const key = cache.key(KEY);
    expect(cache.key({ ...KEY, minRootfsMib: 512 })).not.toBe(key);
    await cache.keep(key, staging, ["rootfs.ext4", "manifest.json"], { rootfsFile: "rootfs.ext4" });
    // The orchestrator publishes the staging directory right away.
    renameSync(staging, join(work, "published"));
    await cache.settled();

    const target = join(work, "again");
    mkdirSync(target);
    expect(await cache.restore(key, target)).toEqual({ rootfsFile: "rootfs.ext4" });
    expect(readdirSync(target).sort()).toEqual(["manifest.json", "rootfs.ext4"]);
    for (const name of ["rootfs.ext4", "manifest.json"]) {
      expect(readFileSync(join(target, name)).equals(readFileSync(join(work, "published", name)))).toBe(true);
      expect(statSync(join(target, name)).nlink).toBe(1);
    }
    const rootfs = statSync(join(target, "rootfs.ext4"));
    expect(rootfs.blocks * 512).toBeLessThan(rootfs.size / 4); // holes kept
    execFileSync("e2fsck", ["-fn", join(target, "rootfs.ext4")], { stdio: "ignore" });
  });

  it("restores nothing for an unknown key or a damaged entry, leaving the staging directory empty", async () => {
    const target = join(work, "target");
    mkdirSync(target);
    expect(await cache.restore(cache.key(KEY), target)).toBeUndefined();
    const key = cache.key(KEY);
    mkdirSync(join(work, "built", key), { recursive: true });
    expect(await cache.restore(key, target)).toBeUndefined(); // no result.json
    expect(readdirSync(target)).toEqual([]);
  });

  it("prunes entries not used since the cut-off; a restore counts as use", async () => {
    const staging = staged("staging");
    const [oldKey, usedKey] = [cache.key(KEY), cache.key({ ...KEY, minRootfsMib: 1 })];
    await cache.keep(oldKey, staging, ["rootfs.ext4"], {});
    await cache.keep(usedKey, staging, ["rootfs.ext4"], {});
    await cache.settled();
    const longAgo = new Date(Date.now() - 30 * 24 * 3600 * 1000);
    for (const key of [oldKey, usedKey]) utimesSync(join(work, "built", key), longAgo, longAgo);
    const target = join(work, "target");
    mkdirSync(target);
    await cache.restore(usedKey, target);

    const { removed, freedBytes } = await cache.prune(new Date(Date.now() - 24 * 3600 * 1000));
    expect(removed).toBe(1);
    expect(freedBytes).toBeGreaterThan(0);
    expect(existsSync(join(work, "built", oldKey))).toBe(false);
    expect(existsSync(join(work, "built", usedKey))).toBe(true);
  });
});
