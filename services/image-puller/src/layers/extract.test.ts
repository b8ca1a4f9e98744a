/**
 * applyLayer on layers made here, byte for byte: links are resolved inside
 * the tree only, files are written sparse, and the image's limits (bytes,
 * entries, free space) and malformed bytes end the layer with a clear error.
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { InvalidArgumentError, ResourceExhaustedError } from "@banger/common/errors";
import { requireTools } from "@banger/common/testing";
import tar from "tar-stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { applyLayer } from "./extract.js";
import { paxRecords } from "./layer-stream.js";
import { DEFAULT_BUILD_LIMITS, type BuildLimits, type BuildUsage } from "./limits.js";
import type { MetadataMap } from "./metadata.js";
import { rawTar } from "../../test-support/layers/raw-tar.js";

interface Entry {
  name: string;
  type?: "file" | "directory" | "symlink" | "link";
  linkname?: string;
  content?: Buffer | string;
  pax?: Record<string, string>;
}

async function tarOf(entries: readonly Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on("data", (c: unknown) => chunks.push(c as Buffer));
  const ended = new Promise<void>((r) => pack.on("end", () => r()));
  for (const e of entries) {
    const type = e.type ?? "file";
    await new Promise<void>((resolve, reject) => {
      pack.entry(
        {
          name: e.name,
          type,
          mode: type === "directory" ? 0o755 : 0o644,
          ...(e.linkname ? { linkname: e.linkname } : {}),
          ...(e.pax ? { pax: e.pax } : {}),
        },
        type === "file" ? (e.content ?? "") : "",
        (error) => (error ? reject(error) : resolve()),
      );
    });
  }
  pack.finalize();
  await ended;
  return Buffer.concat(chunks);
}

let work: string;
let tree: string;
beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), "banger-extract-"));
  tree = join(work, "tree");
  mkdirSync(tree);
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

function apply(
  blob: Buffer,
  limits: Partial<BuildLimits> = {},
  usage: BuildUsage = { bytes: 0, entries: 0 },
  meta: MetadataMap = new Map(),
) {
  const blobPath = join(work, `layer-${randomBytes(4).toString("hex")}`);
  writeFileSync(blobPath, blob);
  return applyLayer(tree, blobPath, meta, {
    signal: new AbortController().signal,
    limits: { ...DEFAULT_BUILD_LIMITS, ...limits },
    usage,
  });
}

describe("applyLayer: links", () => {
  it("refuses a hardlink through a symlinked directory out of the tree, linking nothing", async () => {
    // The owner's ~/.ssh, on the same file system as the tree (so link(2) could succeed).
    const ssh = join(work, "home", ".ssh");
    mkdirSync(ssh, { recursive: true });
    writeFileSync(join(ssh, "id_ed25519"), "PRIVATE KEY");
    const layer = await tarOf([
      { name: "a", type: "symlink", linkname: ssh },
      { name: "root/", type: "directory" },
      { name: "root/key", type: "link", linkname: "a/id_ed25519" },
    ]);
    const error = await apply(layer).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error).toMatchObject({ reason: "HOSTILE_LAYER" });
    expect((error as Error).message).toMatch(/hostile layer entry "root\/key": hardlink to a\/id_ed25519/);
    expect(statSync(join(ssh, "id_ed25519")).nlink).toBe(1);
    expect(existsSync(join(tree, "root", "key"))).toBe(false);
  });

  it("still links a file reached through real directories, and refuses a link to a directory or itself", async () => {
    await apply(
      await tarOf([
        { name: "usr/bin/tool", content: "tool" },
        { name: "bin/tool", type: "link", linkname: "/usr/bin/tool" },
      ]),
    );
    expect(statSync(join(tree, "bin", "tool")).ino).toBe(statSync(join(tree, "usr", "bin", "tool")).ino);
    await expect(apply(await tarOf([{ name: "x", type: "link", linkname: "usr/bin" }]))).rejects.toThrow(
      /hostile layer entry "x": hardlink to usr\/bin/,
    );
    await expect(apply(await tarOf([{ name: "bin/tool", type: "link", linkname: "bin/tool" }]))).rejects.toThrow(
      /hostile layer entry "bin\/tool"/,
    );
  });
});

/** zstd makes the test layers that are zstd-compressed. */
const HAVE_ZSTD = requireTools("applyLayer on zstd layers", ["zstd"]).length === 0;

describe("applyLayer: sparse files", () => {
  it.skipIf(!HAVE_ZSTD)("writes zeros as holes and everything else byte for byte, at any chunk boundary", async () => {
    const big = Buffer.alloc(64 * 1024 * 1024);
    big.write("the end", big.length - 7);
    // Zero runs and data at odd offsets, across tar-stream's chunk boundaries.
    const mixed = Buffer.alloc(3 * 1024 * 1024 + 123);
    for (const at of [0, 4095, 4096 * 7 + 1, 65536 * 3 - 5, mixed.length - 1]) randomBytes(300).copy(mixed, at);
    const zerosTail = Buffer.concat([randomBytes(5000), Buffer.alloc(10_000)]);
    const layer = await tarOf([
      { name: "big", content: big },
      { name: "mixed", content: mixed },
      { name: "zeros-tail", content: zerosTail },
      { name: "empty", content: "" },
    ]);
    await apply(execFileSync("zstd", ["-q", "-c"], { input: layer, maxBuffer: 2 ** 30 }));
    const stats = statSync(join(tree, "big"));
    expect(stats.size).toBe(big.length);
    expect(stats.blocks * 512).toBeLessThanOrEqual(64 * 1024); // one block of data, not 64 MiB
    expect(readFileSync(join(tree, "big")).subarray(-7).toString()).toBe("the end");
    expect(readFileSync(join(tree, "mixed")).equals(mixed)).toBe(true);
    expect(readFileSync(join(tree, "zeros-tail")).equals(zerosTail)).toBe(true);
    expect(statSync(join(tree, "empty")).size).toBe(0);
  });
});

describe("applyLayer: limits and malformed layers", () => {
  it("stops at the image's byte limit, counted across layers, naming the limit", async () => {
    const usage = { bytes: 0, entries: 0 };
    const layer = await tarOf([{ name: "a", content: Buffer.alloc(3 * 1024 * 1024, 1) }]);
    await apply(gzipSync(layer), { maxImageBytes: 5 * 1024 * 1024 }, usage);
    const error = await apply(gzipSync(layer), { maxImageBytes: 5 * 1024 * 1024 }, usage).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ResourceExhaustedError);
    expect(error).toMatchObject({ reason: "IMAGE_TOO_LARGE" });
    expect((error as Error).message).toContain("more than 5242880 bytes (5 MiB)");
    expect((error as Error).message).toContain("--max-image-mib");
  });

  it("stops at the image's entry limit, counted across layers", async () => {
    const usage = { bytes: 0, entries: 0 };
    const names = (prefix: string) => Array.from({ length: 30 }, (_, i) => ({ name: `${prefix}${i}` }));
    await apply(await tarOf(names("a")), { maxImageEntries: 50 }, usage);
    const error = await apply(await tarOf(names("b")), { maxImageEntries: 50 }, usage).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ResourceExhaustedError);
    expect(error).toMatchObject({ reason: "IMAGE_TOO_MANY_ENTRIES" });
    expect((error as Error).message).toMatch(/more than 50 entries.*--max-image-entries/);
    expect(existsSync(join(tree, "b20"))).toBe(false);
  });

  it("counts long paths against the entry limit, so the recorded metadata stays bounded", async () => {
    const deep = `${"d".repeat(200)}/`.repeat(10); // 2010 bytes of path per entry
    const files = Array.from({ length: 30 }, (_, i) => ({ name: `${deep}${i}` }));
    const error = await apply(await tarOf(files), { maxImageEntries: 100 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ResourceExhaustedError);
    expect(error).toMatchObject({ reason: "IMAGE_TOO_MANY_ENTRIES" });
    expect((error as Error).message).toContain("paths of more than 25600 bytes");
  });

  it("stops when the tree's file system has less free space than it keeps, before writing", async () => {
    const error = await apply(await tarOf([{ name: "a", content: "x" }]), {
      minFreeBytes: Number.MAX_SAFE_INTEGER,
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ResourceExhaustedError);
    expect(error).toMatchObject({ reason: "SCRATCH_SPACE_LOW" });
    expect((error as Error).message).toContain("--min-free-mib");
    expect(existsSync(join(tree, "a"))).toBe(false);
  });

  const refusesAsMalformed = async (bytes: Buffer) => {
    const error = await apply(bytes).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error).toMatchObject({ reason: "MALFORMED_LAYER" });
  };

  it.each([
    ["gzip cut short", () => gzipSync(Buffer.alloc(100_000, 7)).subarray(0, 500)],
    ["not a tar", () => gzipSync(randomBytes(4096))],
  ])("refuses %s as a malformed layer", async (_what, bytes) => {
    await refusesAsMalformed(bytes());
  });

  it.skipIf(!HAVE_ZSTD)("refuses zstd cut short as a malformed layer", async () => {
    await refusesAsMalformed(execFileSync("zstd", ["-q", "-c"], { input: randomBytes(200_000) }).subarray(0, 1000));
  });

  it("refuses names too long for Linux and outsized capabilities", async () => {
    await expect(apply(await tarOf([{ name: `${"d/".repeat(2100)}x` }]))).rejects.toThrow(/longer than 4095 bytes/);
    await expect(apply(await tarOf([{ name: `d/${"x".repeat(256)}` }]))).rejects.toThrow(
      /hostile layer entry "d\/x{198}": a name of 256 bytes, longer than the 255 ext4 can hold/,
    );
    const pax = { "SCHILY.xattr.security.capability": "c".repeat(4096) };
    await expect(apply(await tarOf([{ name: "bin/ping", content: "p", pax }]))).rejects.toThrow(
      /security.capability of 4096 bytes/,
    );
    expect(lstatSync(tree).isDirectory()).toBe(true);
  });
});

describe("applyLayer: names byte for byte", () => {
  const bytes = (text: string) => Buffer.from(text, "latin1");
  /** The tree's path of `name` (bytes) under the tree, as a Buffer for the file system. */
  const inTree = (...parts: Buffer[]) =>
    Buffer.concat([Buffer.from(`${tree}/`), ...parts.flatMap((p, i) => (i ? [Buffer.from("/"), p] : [p]))]);
  // security.capability v2 with cap_setuid (bit 7: a byte of 0x80, not UTF-8 on its own) and cap_net_raw.
  const capability = Buffer.from("0100000280200000000000000000000000000000", "hex");

  it("keeps any name but `..` and NUL, from the header or a pax record, with its link target, capability, mtime and device", async () => {
    const nonUtf8 = Buffer.from([0x6e, 0xff, 0xfe, 0x0a]);
    const meta: MetadataMap = new Map();
    await apply(
      rawTar([
        { name: "d/", type: "directory", mtime: 1111 },
        { name: "d/system-systemd\\x2dcryptsetup.slice", content: "unit", mtime: 1234567890 },
        { name: "d/q\"u'o te\nline", content: "q", uid: 1234, gid: 5678, mode: 0o4755 },
        { name: Buffer.concat([Buffer.from("d/"), nonUtf8]), content: "header" },
        { name: Buffer.concat([Buffer.from("d/pax-"), nonUtf8]), content: "pax", paxNames: true },
        { name: "d/-ünïcødé", type: "symlink", linkname: Buffer.concat([Buffer.from("../"), nonUtf8]), paxNames: true },
        {
          name: "d/ping",
          content: "p",
          pax: { "SCHILY.xattr.security.capability": capability, mtime: "1700000000.75" },
        },
        { name: "d/tty\n1", type: "char", devmajor: 4, devminor: 1, mode: 0o620 },
        { name: 'd/fifo "', type: "fifo", mode: 0o600 },
      ]),
      {},
      undefined,
      meta,
    );
    const names = readdirSync(inTree(bytes("d")), { encoding: "buffer" }).map((n) => n.toString("latin1"));
    expect(names.sort()).toEqual(
      [
        "system-systemd\\x2dcryptsetup.slice",
        bytes("q\"u'o te\nline").toString("latin1"),
        nonUtf8.toString("latin1"),
        `pax-${nonUtf8.toString("latin1")}`,
        Buffer.from("-ünïcødé").toString("latin1"),
        "ping",
        "tty\n1",
        'fifo "',
      ].sort(),
    );
    expect(readFileSync(inTree(bytes("d"), nonUtf8)).toString()).toBe("header");
    expect(readFileSync(inTree(bytes("d"), Buffer.concat([bytes("pax-"), nonUtf8]))).toString()).toBe("pax");
    expect(readlinkSync(inTree(bytes("d"), Buffer.from("-ünïcødé")), { encoding: "buffer" })).toEqual(
      Buffer.concat([Buffer.from("../"), nonUtf8]),
    );
    expect(meta.get("d")).toMatchObject({ type: "dir", mtime: 1111 });
    expect(meta.get("d/system-systemd\\x2dcryptsetup.slice")).toMatchObject({ type: "file", mtime: 1234567890 });
    expect(meta.get("d/q\"u'o te\nline")).toMatchObject({ uid: 1234, gid: 5678, mode: 0o4755 });
    expect(meta.get("d/ping")?.capability).toEqual(capability);
    expect(meta.get("d/ping")?.mtime).toBe(1700000000);
    expect(meta.get("d/tty\n1")).toMatchObject({ type: "char", devMajor: 4, devMinor: 1, mode: 0o620 });
    expect(meta.get('d/fifo "')).toMatchObject({ type: "fifo", mode: 0o600 });
    // Devices and FIFOs hold their names as empty files until the image is built.
    expect(lstatSync(inTree(bytes("d"), bytes("tty\n1"))).isFile()).toBe(true);
    expect(lstatSync(inTree(bytes("d"), bytes("tty\n1"))).size).toBe(0);
  });

  it("reads pax records as bytes, as tar-stream's own decoder would but for the encoding", () => {
    const records = Buffer.concat([Buffer.from("10 path=\xff\n", "latin1"), Buffer.from("8 a=b=c\n")]);
    expect(paxRecords(records)).toEqual({ path: "\xff", a: "b=c" });
    expect(paxRecords(Buffer.from("99 path=x\n"))).toEqual({});
  });

  it("refuses a device number ext4 cannot hold", async () => {
    await expect(apply(rawTar([{ name: "dev/x", type: "char", devmajor: 4096, devminor: 0 }]))).rejects.toThrow(
      /hostile layer entry "dev\/x": device 4096:0/,
    );
  });
});
