/**
 * buildRootfs on trees made by applyLayer: every name a tar can carry lands
 * in the image byte for byte with its owner, mode, mtime, links, device
 * numbers and capability (read back through a loop mount: root only), and
 * the image passes e2fsck -fn. parseListings reads debugfs's listings of
 * names that look like listings.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EXT4_TOOLS, requireTools } from "@banger/common/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { buildRootfs, parseListings, verifyExt4 } from "./image.js";
import { applyLayer } from "../layers/extract.js";
import { DEFAULT_BUILD_LIMITS } from "../layers/limits.js";
import type { MetadataMap } from "../layers/metadata.js";
import { ODD_LAYER, oddExpected, seenInImage } from "../../test-support/layers/odd-names.js";
import { rawTar } from "../../test-support/layers/raw-tar.js";

let work: string;
beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), "banger-ext4-"));
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

const signal = new AbortController().signal;

describe("parseListings", () => {
  const listing = (dir: number, ...records: string[]) =>
    Buffer.concat([
      Buffer.from(`debugfs: ls -p <${dir}>\n`),
      ...records.map((r) => Buffer.from(`${r}\n`, "latin1")),
      Buffer.from("\n"),
    ]);

  it("reads names with newlines, quotes and what looks like another record or command", () => {
    const fake = "x\n\ndebugfs: ls -p <1>\n"; // an entry's end, a listing's end, a command
    const out = Buffer.concat([
      listing(
        2,
        "/2/040755/0/0/.//",
        "/2/040755/0/0/..//",
        `/12/100644/0/0/${fake}/5/`,
        "/13/040755/0/0/d\ndebugfs: ls -p <1>//",
      ),
      listing(13, "/13/040755/0/0/.//", "/2/040755/0/0/..//", "/14/100644/1000/1000/\xff\xfe/0/"),
    ]);
    expect(parseListings(out, [2, 13])).toEqual([
      [
        { ino: 2, mode: 0o40755, uid: 0, gid: 0, name: "." },
        { ino: 2, mode: 0o40755, uid: 0, gid: 0, name: ".." },
        { ino: 12, mode: 0o100644, uid: 0, gid: 0, name: fake },
        { ino: 13, mode: 0o40755, uid: 0, gid: 0, name: "d\ndebugfs: ls -p <1>" },
      ],
      [
        { ino: 13, mode: 0o40755, uid: 0, gid: 0, name: "." },
        { ino: 2, mode: 0o40755, uid: 0, gid: 0, name: ".." },
        { ino: 14, mode: 0o100644, uid: 1000, gid: 1000, name: "\xff\xfe" },
      ],
    ]);
  });

  it.each([
    ["another directory's listing", listing(3, "/2/040755/0/0/.//")],
    ["a cut listing", Buffer.from("debugfs: ls -p <2>\n/2/040755/0/0/./")],
    ["an error in place of a record", Buffer.from("debugfs: ls -p <2>\nls: Bad inode\n\n")],
    ["output after the last listing", Buffer.concat([listing(2), Buffer.from("/3/0/0/0/x/0/\n")])],
    ["an inode number that is not one", listing(2, "/0x1/100644/0/0/x/0/")],
  ])("refuses %s", (_what, out) => {
    expect(() => parseListings(out, [2])).toThrow(/debugfs listed the image's directories unexpectedly/);
  });
});

describe.skipIf(process.getuid?.() !== 0 || requireTools("buildRootfs", EXT4_TOOLS).length > 0)("buildRootfs", () => {
  it("keeps every name byte for byte with its owner, mode, mtime, links, device and capability", async () => {
    const tree = join(work, "tree");
    mkdirSync(tree);
    writeFileSync(join(work, "layer.tar"), rawTar(ODD_LAYER));
    const meta: MetadataMap = new Map();
    await applyLayer(tree, join(work, "layer.tar"), meta, {
      signal,
      limits: DEFAULT_BUILD_LIMITS,
      usage: { bytes: 0, entries: 0 },
    });
    const image = join(work, "rootfs.ext4");
    const options = { minMib: 64, headroomPercent: 20, inodeMarginPercent: 25, signal };
    await buildRootfs(tree, meta, image, options, () => undefined);
    await verifyExt4(image, signal);
    expect(seenInImage(image)).toEqual(oddExpected());
  });
});
