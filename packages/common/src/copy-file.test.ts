import { mkdtempSync, openSync, readFileSync, rmSync, statSync, writeSync, closeSync, ftruncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { copySparse } from "./copy-file.js";

const MIB = 1024 * 1024;

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "copy-sparse-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** A `size`-byte file with `data` written at each offset and holes elsewhere. */
function sparseFile(path: string, size: number, writes: readonly [number, string][]): void {
  const fd = openSync(path, "w");
  ftruncateSync(fd, size);
  for (const [offset, data] of writes) writeSync(fd, data, offset);
  closeSync(fd);
}

describe("copySparse (cp --reflink=auto --sparse=always)", () => {
  it("copies a disk image where no reflink is possible as a sparse file: same bytes, holes kept", async () => {
    const source = join(dir, "disk.ext4");
    const target = join(dir, "copy.ext4");
    sparseFile(source, 64 * MIB, [
      [0, "superblock"],
      [40 * MIB, "data in the middle"],
      [64 * MIB - 4, "end!"],
    ]);
    await copySparse(source, target);
    const copied = statSync(target);
    expect(copied.size).toBe(64 * MIB);
    // Three small extents, not 64 MiB of zeros.
    expect(copied.blocks * 512).toBeLessThan(4 * MIB);
    expect(readFileSync(target).equals(readFileSync(source))).toBe(true);
  });

  it("makes holes of runs of zeros written out in full", async () => {
    const source = join(dir, "dense.img");
    const target = join(dir, "copy.img");
    const fd = openSync(source, "w");
    writeSync(fd, Buffer.alloc(16 * MIB));
    writeSync(fd, "tail", 16 * MIB);
    closeSync(fd);
    expect(statSync(source).blocks * 512).toBeGreaterThanOrEqual(16 * MIB);
    await copySparse(source, target);
    expect(statSync(target).blocks * 512).toBeLessThan(MIB);
    expect(readFileSync(target).equals(readFileSync(source))).toBe(true);
  });

  it("fails with cp's words for a missing source and leaves no target", async () => {
    const target = join(dir, "copy.img");
    await expect(copySparse(join(dir, "missing.img"), target)).rejects.toThrow(/missing\.img/);
    expect(() => statSync(target)).toThrow();
  });
});
