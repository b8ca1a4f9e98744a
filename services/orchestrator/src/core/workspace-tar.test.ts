/**
 * The tar side of workspaces with real files: what the host packs arrives
 * as it was, and a guest's tar (which the host does not trust) cannot write
 * outside the directory it is unpacked into.
 */
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import type { BangerError } from "@banger/common";
import tar from "tar-stream";
import { describe, expect, it } from "vitest";
import { useTempDir } from "../../test-support/store.js";
import { extractTree, packTree, type TreeEntry } from "./workspace-tar.js";

const temp = useTempDir();
const never = new AbortController().signal;

function entryOf(root: string, path: string): TreeEntry {
  const source = join(root, path);
  const stats = lstatSync(source);
  const kind = stats.isDirectory() ? "directory" : stats.isSymbolicLink() ? "symlink" : "file";
  return {
    path,
    kind,
    source,
    linkTarget: kind === "symlink" ? readlinkSync(source) : "",
    mode: stats.mode & 0o777,
    size: kind === "file" ? stats.size : 0,
    mtimeMs: stats.mtimeMs,
  };
}

/** A tar of `entries` (header, content) as tar-stream writes it. */
async function tarOf(entries: [tar.Header | { name: string; [key: string]: unknown }, string?][]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  // Read while writing: a large entry's callback waits until the pack is read.
  const read = (async () => {
    for await (const chunk of pack as AsyncIterable<Buffer>) chunks.push(chunk);
  })();
  for (const [header, content] of entries) {
    await new Promise<void>((resolve, reject) => {
      const done = (error?: Error | null) => (error ? reject(error) : resolve());
      if (content === undefined) pack.entry(header, done);
      else pack.entry(header, content, done);
    });
  }
  pack.finalize();
  await read;
  return Buffer.concat(chunks);
}

describe("workspace tars", () => {
  it("pack then unpack gives back files, modes, symlinks and large files, and counts the bytes sent", async () => {
    const src = join(temp(), "src");
    mkdirSync(join(src, "sub dir"), { recursive: true });
    writeFileSync(join(src, "sub dir", "a.txt"), "a\n");
    writeFileSync(join(src, "run.sh"), "#!/bin/sh\n", { mode: 0o755 });
    const large = Buffer.alloc(3 * 1024 * 1024, 7);
    writeFileSync(join(src, "large.bin"), large);
    symlinkSync("sub dir/a.txt", join(src, "link"));
    const entries = ["sub dir", "large.bin", "link", "run.sh", "sub dir/a.txt"].map((p) => entryOf(src, p));
    let bytes = 0;
    let files = 0;
    const packed = Readable.from(
      packTree(
        entries,
        (n, done) => {
          bytes += n;
          if (done) files++;
        },
        never,
      ),
    );
    const out = join(temp(), "out");
    mkdirSync(out);
    await extractTree(packed, out, () => false, never);
    expect([bytes, files]).toEqual([large.length + 2 + 10, 4]);
    expect(readFileSync(join(out, "large.bin")).equals(large)).toBe(true);
    expect(readFileSync(join(out, "sub dir", "a.txt"), "utf8")).toBe("a\n");
    expect(statSync(join(out, "run.sh")).mode & 0o777).toBe(0o755);
    expect(readlinkSync(join(out, "link"))).toBe("sub dir/a.txt");
  });

  it("refuses to pack a file that changed since it was scanned (FILE_CHANGED)", async () => {
    const src = join(temp(), "src");
    mkdirSync(src);
    writeFileSync(join(src, "a.txt"), "before\n");
    const entry = entryOf(src, "a.txt");
    writeFileSync(join(src, "a.txt"), "after, longer\n");
    const error = await (async () => {
      for await (const _ of packTree([entry], () => undefined, never)) void _;
    })().catch((e: unknown) => e as BangerError);
    expect(error?.reason).toBe("FILE_CHANGED");
  });

  it("unpacks a hostile guest tar nowhere but inside its directory (UNSAFE_GUEST_TAR)", async () => {
    const hostile: [string, [{ name: string; [key: string]: unknown }, string?][]][] = [
      ["climbs out", [[{ name: "../escaped.txt" }, "x"]]],
      ["is absolute", [[{ name: "/tmp/escaped.txt" }, "x"]]],
      [
        "writes through a symlink",
        [[{ name: "out", type: "symlink", linkname: join(temp(), "outside") }], [{ name: "out/escaped.txt" }, "x"]],
      ],
      ["hard-links what it did not write", [[{ name: "copy", type: "link", linkname: "../../etc/passwd" }]]],
    ];
    mkdirSync(join(temp(), "outside"));
    for (const [what, entries] of hostile) {
      const root = join(temp(), `into-${what.replace(/\W/g, "-")}`);
      mkdirSync(root);
      const error = await extractTree(Readable.from([await tarOf(entries)]), root, () => false, never).catch(
        (e: unknown) => e as BangerError,
      );
      expect((error as BangerError | undefined)?.reason, what).toBe("UNSAFE_GUEST_TAR");
    }
    expect(existsSync(join(temp(), "escaped.txt"))).toBe(false);
    expect(existsSync(join(temp(), "outside", "escaped.txt"))).toBe(false);
  });

  it("stops a guest's tar at its byte and entry limits with RESOURCE_EXHAUSTED, hard links counted as copies", async () => {
    const du = (dir: string): number =>
      readdirSync(dir, { recursive: true, withFileTypes: true })
        .filter((e) => e.isFile())
        .reduce((sum, e) => sum + statSync(join(e.parentPath, e.name)).size, 0);
    const mib = "x".repeat(1024 * 1024);

    // A guest that never stops sending: 1 MiB files for as long as it is read.
    async function* endless(): AsyncGenerator<Buffer> {
      for (let i = 0; ; i++) yield await tarOf([[{ name: `f${i}` }, mib]]).then((b) => b.subarray(0, b.length - 1024));
    }
    const endlessRoot = join(temp(), "endless");
    mkdirSync(endlessRoot);
    const tooLarge = await extractTree(Readable.from(endless()), endlessRoot, () => false, never, {
      maxBytes: 8 * 1024 * 1024,
      maxEntries: 1000,
    }).catch((e: unknown) => e as BangerError);
    expect(tooLarge).toMatchObject({ kind: "resource-exhausted", reason: "GUEST_TAR_TOO_LARGE" });
    expect((tooLarge as BangerError).message).toContain("8388608 bytes");
    expect(du(endlessRoot)).toBeLessThanOrEqual(9 * 1024 * 1024);

    // One file, then a hundred hard links to it: each would be a copy here.
    const linksRoot = join(temp(), "links");
    mkdirSync(linksRoot);
    const links: [{ name: string; [key: string]: unknown }, string?][] = [[{ name: "big" }, mib]];
    for (let i = 0; i < 100; i++) links.push([{ name: `link${i}`, type: "link", linkname: "big" }]);
    const linked = await extractTree(Readable.from([await tarOf(links)]), linksRoot, () => false, never, {
      maxBytes: 8 * 1024 * 1024,
      maxEntries: 1000,
    }).catch((e: unknown) => e as BangerError);
    expect(linked).toMatchObject({ kind: "resource-exhausted", reason: "GUEST_TAR_TOO_LARGE" });
    expect(du(linksRoot)).toBeLessThanOrEqual(8 * 1024 * 1024);

    // Many empty entries.
    const manyRoot = join(temp(), "many");
    mkdirSync(manyRoot);
    const many: [{ name: string; [key: string]: unknown }, string?][] = [];
    for (let i = 0; i < 50; i++) many.push([{ name: `e${i}` }, ""]);
    const tooMany = await extractTree(Readable.from([await tarOf(many)]), manyRoot, () => false, never, {
      maxBytes: 1024,
      maxEntries: 20,
    }).catch((e: unknown) => e as BangerError);
    expect(tooMany).toMatchObject({ kind: "resource-exhausted", reason: "GUEST_TAR_TOO_MANY_ENTRIES" });
    expect(readdirSync(manyRoot).length).toBeLessThanOrEqual(20);
  });

  it("leaves out what it is told to skip, with everything under it", async () => {
    const root = join(temp(), "out");
    mkdirSync(root);
    const packed = await tarOf([
      [{ name: "./.git/config" }, "x"],
      [{ name: "./src/.git/keep" }, "y"],
      [{ name: "./a.txt" }, "a"],
    ]);
    await extractTree(Readable.from([packed]), root, (path) => path === ".git", never);
    expect(existsSync(join(root, ".git"))).toBe(false);
    expect(readFileSync(join(root, "src", ".git", "keep"), "utf8")).toBe("y");
    expect(readFileSync(join(root, "a.txt"), "utf8")).toBe("a");
  });
});
