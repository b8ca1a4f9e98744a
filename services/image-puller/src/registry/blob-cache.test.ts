import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BangerError } from "@banger/common/errors";
import type { BlobCache } from "../core/ports.js";
import { createBlobCache } from "./blob-cache.js";

const digestOf = (bytes: Uint8Array): string => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

async function* chunks(...parts: Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const part of parts) {
    await new Promise((resolve) => setImmediate(resolve));
    yield part;
  }
}

async function reasonOf(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
  } catch (error) {
    return error instanceof BangerError ? error.reason : `untyped: ${String(error)}`;
  }
  return undefined;
}

describe("blob cache", () => {
  let dir: string;
  let cache: BlobCache;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "banger-blob-cache-"));
    cache = createBlobCache(dir);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const files = (): string[] => readdirSync(join(dir, "sha256")).sort();

  it("stores a blob under sha256/<hex> after hashing it, reporting progress", async () => {
    const bytes = Buffer.from("hello, blob");
    const digest = digestOf(bytes);
    const seen: number[] = [];
    const path = await cache.put(digest, bytes.length, chunks(bytes.subarray(0, 5), bytes.subarray(5)), (n) =>
      seen.push(n),
    );
    expect(path).toBe(join(dir, "sha256", digest.slice("sha256:".length)));
    expect(readFileSync(path)).toEqual(bytes);
    expect(seen).toEqual([5, bytes.length]);
    expect(await cache.has(digest)).toBe(true);
    expect(files()).toEqual([digest.slice(7)]);
    expect(await cache.read(digest)).toEqual(bytes);
  });

  it("hands the blob over as it is written: its bytes in order, ending once verified, failing as the put does", async () => {
    const bytes = Buffer.from("bytes read while they are written");
    const digest = digestOf(bytes);
    let read: Promise<Buffer> | undefined;
    let head: Promise<Buffer> | undefined;
    const path = await cache.put(
      digest,
      bytes.length,
      chunks(bytes.subarray(0, 3), bytes.subarray(3, 20), bytes.subarray(20)),
      undefined,
      (blob) => {
        head = blob.head(4);
        read = (async () => {
          const got: Buffer[] = [];
          for await (const chunk of blob.stream()) got.push(chunk as Buffer);
          expect(await blob.done).toBe(join(dir, "sha256", digest.slice(7)));
          return Buffer.concat(got);
        })();
      },
    );
    expect(await head).toEqual(bytes.subarray(0, 4));
    expect(await read).toEqual(bytes);
    expect(readFileSync(path)).toEqual(bytes);

    const other = Buffer.from("not the bytes the digest names");
    let failed: Promise<string | undefined> | undefined;
    const put = cache.put(digestOf(Buffer.from("x")), other.length, chunks(other), undefined, (blob) => {
      failed = reasonOf(
        (async () => {
          for await (const chunk of blob.stream()) void chunk;
        })(),
      );
    });
    expect(await reasonOf(put)).toBe("DIGEST_MISMATCH");
    expect(await failed).toBe("DIGEST_MISMATCH");
  });

  it("accepts a web ReadableStream", async () => {
    const bytes = Buffer.from("streamed");
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(bytes);
        controller.close();
      },
    });
    await cache.put(digestOf(bytes), bytes.length, stream);
    expect(await cache.has(digestOf(bytes))).toBe(true);
  });

  it("refuses content that hashes differently, and keeps nothing", async () => {
    const digest = digestOf(Buffer.from("expected"));
    expect(await reasonOf(cache.put(digest, 8, chunks(Buffer.from("tampered"))))).toBe("DIGEST_MISMATCH");
    expect(await cache.has(digest)).toBe(false);
    expect(files()).toEqual([]);
  });

  it("refuses a body longer than the size, and one that ends early", async () => {
    const bytes = Buffer.from("0123456789");
    const digest = digestOf(bytes);
    expect(await reasonOf(cache.put(digest, 5, chunks(bytes)))).toBe("DIGEST_MISMATCH");
    expect(await reasonOf(cache.put(digest, 10, chunks(bytes.subarray(0, 4))))).toBe("BLOB_TRUNCATED");
    expect(files()).toEqual([]);
  });

  it("removes its temporary file when the body fails mid-way", async () => {
    const bytes = Buffer.from("0123456789");
    async function* failing(): AsyncGenerator<Uint8Array> {
      yield bytes.subarray(0, 3);
      await new Promise((resolve) => setImmediate(resolve));
      // By now the temporary file exists.
      expect(readdirSync(join(dir, "sha256")).filter((name) => name.endsWith(".tmp"))).toHaveLength(1);
      throw new Error("connection reset");
    }
    await expect(cache.put(digestOf(bytes), 10, failing())).rejects.toThrow("connection reset");
    expect(files()).toEqual([]);
  });

  it("two concurrent puts of one digest both succeed with intact content", async () => {
    const bytes = Buffer.alloc(1 << 20, 7);
    const digest = digestOf(bytes);
    const halves = (): AsyncGenerator<Uint8Array> => chunks(bytes.subarray(0, 1 << 19), bytes.subarray(1 << 19));
    const [a, b] = await Promise.all([
      cache.put(digest, bytes.length, halves()),
      cache.put(digest, bytes.length, halves()),
    ]);
    expect(a).toBe(b);
    expect(digestOf(readFileSync(a))).toBe(digest);
    expect(files()).toEqual([digest.slice(7)]);
  });

  it("a put of a cached blob does not read the body", async () => {
    const bytes = Buffer.from("once");
    await cache.put(digestOf(bytes), 4, chunks(bytes));
    let read = false;
    async function* body(): AsyncGenerator<Uint8Array> {
      read = true;
      yield await Promise.resolve(bytes);
    }
    await cache.put(digestOf(bytes), 4, body());
    expect(read).toBe(false);
  });

  it("removes temporary files left by a dead process on the next put, keeps a live one's", async () => {
    const dead = spawnSync("true").pid;
    expect(dead).toBeGreaterThan(0);
    const hex = "ab".repeat(32);
    await cache.put(digestOf(Buffer.from("x")), 1, chunks(Buffer.from("x")));
    // A fresh cache object stands for the next process start.
    const stale = `.${hex}.${dead}.0123456789ab.tmp`;
    const live = `.${hex}.${process.ppid}.0123456789ab.tmp`;
    writeFileSync(join(dir, "sha256", stale), "half a blob");
    writeFileSync(join(dir, "sha256", live), "being written");
    const next = createBlobCache(dir);
    await next.put(digestOf(Buffer.from("y")), 1, chunks(Buffer.from("y")));
    expect(files()).toEqual([live, digestOf(Buffer.from("x")).slice(7), digestOf(Buffer.from("y")).slice(7)].sort());
  });

  it("a second cache object on the same directory never sweeps away a running put", async () => {
    const bytes = Buffer.from("slow blob");
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    async function* slow(): AsyncGenerator<Uint8Array> {
      yield bytes.subarray(0, 4);
      await gate;
      yield bytes.subarray(4);
    }
    const pending = cache.put(digestOf(bytes), bytes.length, slow());
    await expect.poll(() => files().filter((name) => name.endsWith(".tmp"))).toHaveLength(1);
    const other = createBlobCache(dir);
    await other.put(digestOf(Buffer.from("z")), 1, chunks(Buffer.from("z")));
    release();
    expect(await reasonOf(cache.read(digestOf(bytes)))).toBe("BLOB_NOT_CACHED");
    await pending;
    expect(await other.read(digestOf(bytes))).toEqual(bytes);
  });

  it("rejects malformed digests before they touch the file system", async () => {
    expect(() => cache.path("sha256:../../etc/passwd")).toThrow(BangerError);
    expect(await reasonOf(cache.put("sha256:../x", 1, chunks(Buffer.from("x"))))).toBe("UNSUPPORTED_DIGEST");
    expect(await reasonOf(cache.has("md5:abc"))).toBe("UNSUPPORTED_DIGEST");
  });

  it("read() notices a damaged blob and removes it", async () => {
    const bytes = Buffer.from("pristine");
    const path = await cache.put(digestOf(bytes), bytes.length, chunks(bytes));
    writeFileSync(path, "damaged!");
    expect(await reasonOf(cache.read(digestOf(bytes)))).toBe("DIGEST_MISMATCH");
    expect(await cache.has(digestOf(bytes))).toBe(false);
  });

  it("prunes blobs last used before the cut-off, never one in use, and sweeps dead temporary files", async () => {
    const put = async (text: string) => {
      const bytes = Buffer.from(text);
      await cache.put(digestOf(bytes), bytes.length, [bytes]);
      return digestOf(bytes);
    };
    const [old, oldInUse, touched, fresh] = [
      await put("old"),
      await put("in use"),
      await put("touched"),
      await put("new"),
    ];
    const longAgo = new Date(Date.now() - 10 * 24 * 3600 * 1000);
    for (const digest of [old, oldInUse, touched]) utimesSync(cache.path(digest), longAgo, longAgo);
    await cache.touch([touched]);
    writeFileSync(join(dir, "sha256", `.${"a".repeat(64)}.999999999.abcdef.tmp`), "left by a dead pull");

    const result = await cache.prune(new Date(Date.now() - 24 * 3600 * 1000), new Set([oldInUse]));
    expect(result).toEqual({ removed: 1, freedBytes: 3 });
    expect(files()).toEqual([oldInUse, touched, fresh].map((d) => d.slice(7)).sort());
    // keep_days = 0: everything not in use goes.
    expect(await cache.prune(new Date(Date.now() + 1000), new Set([oldInUse]))).toMatchObject({ removed: 2 });
    expect(files()).toEqual([oldInUse.slice(7)]);
  });
});
