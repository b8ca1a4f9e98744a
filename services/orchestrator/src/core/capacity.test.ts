import { mkdirSync, mkdtempSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { stateLayout } from "@banger/common/layout";
import { afterEach, describe, expect, it } from "vitest";
import { measureCapacity } from "./capacity.js";

let dir: string | undefined;
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("measureCapacity", () => {
  it("counts the blocks each VM's disk files hold, not their apparent size, and reports the host's totals", async () => {
    dir = mkdtempSync(join(tmpdir(), "capacity-"));
    const layout = stateLayout(dir);
    const web = layout.vm("vm-web");
    mkdirSync(web.dir, { recursive: true });
    // A clone: 1 MiB written. A work disk: 1 GiB apparent, sparse, 64 KiB written.
    writeFileSync(web.rootDisk, Buffer.alloc(1024 * 1024, 1));
    writeFileSync(web.workDisk, Buffer.alloc(64 * 1024, 1));
    truncateSync(web.workDisk, 1024 * 1024 * 1024);
    // A VM whose files are gone (being deleted): nothing, not an error.
    const capacity = await measureCapacity(dir, [
      { id: "vm-web", name: "web" },
      { id: "vm-gone", name: "gone" },
    ]);
    const blocks = (path: string) => statSync(path).blocks * 512;
    expect(capacity.vms).toEqual([
      { name: "web", rootDiskAllocatedBytes: blocks(web.rootDisk), workDiskAllocatedBytes: blocks(web.workDisk) },
      { name: "gone", rootDiskAllocatedBytes: 0, workDiskAllocatedBytes: 0 },
    ]);
    expect(capacity.vms[0]?.workDiskAllocatedBytes).toBeLessThan(1024 * 1024);
    expect(capacity.allocatedBytes).toBe(blocks(web.rootDisk) + blocks(web.workDisk));
    expect(capacity).toMatchObject({ hostCpus: availableParallelism(), hostMemoryBytes: totalmem(), stateDir: dir });
    expect(capacity.stateFsSizeBytes).toBeGreaterThan(0);
    expect(capacity.stateFsUsedBytes).toBeLessThanOrEqual(capacity.stateFsSizeBytes);
  });
});
