/**
 * The registry client against a fake registry (node:http) that misbehaves
 * on purpose: wrong bytes, cut downloads, stalls, cross-origin redirects,
 * schema 1, lying digests; and against a stub fetch for scheme rules.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BangerError } from "@banger/common/errors";
import { createBlobCache } from "./blob-cache.js";
import { createRegistryClient } from "./client.js";
import { DigestMismatchError } from "./digest.js";
import { DEFAULT_PLATFORM, MediaType, type Descriptor } from "./manifest.js";
import { parseReference } from "@banger/common/registry";
import { sha256 } from "../../test-support/registry/oci-image.js";
import { startBlobStore, startFakeRegistry, type FakeServer } from "../../test-support/registry/fake-registry.js";

const LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
const signal = (): AbortSignal => AbortSignal.timeout(10_000);

async function failure(promise: Promise<unknown>): Promise<BangerError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof BangerError) return error;
    throw error;
  }
  throw new Error("expected a failure");
}

function blob(bytes: Buffer): Descriptor & { bytes: Buffer } {
  return { mediaType: LAYER, digest: sha256(bytes), size: bytes.length, bytes };
}

const good = blob(randomBytes(300_000));
const shared = blob(randomBytes(200_000));
const expected = blob(randomBytes(100_000));
const tampered = randomBytes(100_000); // same size, other bytes
const cut = blob(randomBytes(400_000));
const stalled = blob(randomBytes(400_000));
const moved = blob(randomBytes(50_000));

const schema1 = Buffer.from(JSON.stringify({ schemaVersion: 1, name: "legacy", tag: "1", fsLayers: [], history: [] }));
const realManifest = Buffer.from(
  JSON.stringify({
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    config: { mediaType: MediaType.ociConfig, digest: good.digest, size: good.size },
    layers: [],
  }),
);
const pinnedDigest = sha256(Buffer.from("some other manifest"));

let work: string;
let registry: FakeServer;
let store: FakeServer;
let cacheCount = 0;

function newClient(): ReturnType<typeof createRegistryClient> & { cacheDir: string } {
  const cacheDir = join(work, `cache-${(cacheCount += 1)}`);
  return { ...createRegistryClient({ cache: createBlobCache(cacheDir), insecureRegistries: [] }), cacheDir };
}

/** What is in a cache directory: final blobs and temporary files alike. */
function cacheFiles(cacheDir: string): string[] {
  const dir = join(cacheDir, "sha256");
  return existsSync(dir) ? readdirSync(dir) : [];
}

const blobRequests = (digest: string): number =>
  registry.requests.filter((r) => r.path.endsWith(`/blobs/${digest}`)).length;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "banger-registry-integrity-"));
  store = await startBlobStore({ [moved.digest]: moved.bytes });
  registry = await startFakeRegistry({
    requireToken: true,
    redirectTo: `http://${store.host}/storage`,
    blobs: {
      [good.digest]: { bytes: good.bytes },
      [shared.digest]: { bytes: shared.bytes },
      [expected.digest]: { bytes: tampered },
      [cut.digest]: { bytes: cut.bytes, behaviour: "truncate" },
      [stalled.digest]: { bytes: stalled.bytes, behaviour: "stall" },
      [moved.digest]: { bytes: moved.bytes, behaviour: "redirect" },
    },
    manifests: {
      "legacy/manifests/1": {
        bytes: schema1,
        contentType: "application/vnd.docker.distribution.manifest.v1+prettyjws",
      },
      "legacy/manifests/unlabelled": { bytes: schema1, contentType: "application/json" },
      [`img/manifests/${pinnedDigest}`]: { bytes: realManifest, contentType: MediaType.ociManifest },
      "img/manifests/lying": {
        bytes: realManifest,
        contentType: MediaType.ociManifest,
        digestHeader: pinnedDigest,
      },
    },
  });
});

afterAll(async () => {
  await registry.stop();
  await store.stop();
  rmSync(work, { recursive: true, force: true });
});

describe("blob integrity", () => {
  it("a blob whose bytes do not match its digest fails with DIGEST_MISMATCH and leaves nothing in the cache", async () => {
    const c = newClient();
    const ref = parseReference(`${registry.host}/img:1`);
    const error = await failure(c.fetchBlob(ref, expected, { signal: signal() }));
    expect(error).toBeInstanceOf(DigestMismatchError);
    expect([error.kind, error.reason]).toEqual(["internal", "DIGEST_MISMATCH"]);
    expect(error.message).toContain(expected.digest);
    expect(await c.cache.has(expected.digest)).toBe(false);
    expect(cacheFiles(c.cacheDir)).toEqual([]);
  });

  it("a download cut short fails with BLOB_TRUNCATED and leaves nothing in the cache", async () => {
    const c = newClient();
    const ref = parseReference(`${registry.host}/img:1`);
    let progress = 0;
    const error = await failure(c.fetchBlob(ref, cut, { signal: signal(), onProgress: (n) => (progress = n) }));
    expect([error.kind, error.reason]).toEqual(["unavailable", "BLOB_TRUNCATED"]);
    expect(error.message).toContain(`of ${cut.size} bytes`);
    expect(progress).toBeGreaterThan(0);
    expect(progress).toBeLessThan(cut.size);
    expect(cacheFiles(c.cacheDir)).toEqual([]);
  });

  it("a download cancelled mid-way stops at once and leaves nothing in the cache", async () => {
    const c = newClient();
    const ref = parseReference(`${registry.host}/img:1`);
    const controller = new AbortController();
    const pending = c.fetchBlob(ref, stalled, {
      signal: controller.signal,
      onProgress: () => controller.abort(),
    });
    const error = await failure(pending);
    expect(error.kind).toBe("cancelled");
    // The download's own stream is torn down too: its temporary file goes.
    await expect.poll(() => cacheFiles(c.cacheDir)).toEqual([]);
    // The client still works afterwards.
    expect(sha256(readFileSync(await c.fetchBlob(ref, good, { signal: signal() })))).toBe(good.digest);
  });

  it("a cached blob is fetched again without any request", async () => {
    const c = newClient();
    const ref = parseReference(`${registry.host}/img:1`);
    const before = blobRequests(good.digest);
    const first = await c.fetchBlob(ref, good, { signal: signal() });
    const afterFirst = blobRequests(good.digest);
    expect(afterFirst).toBeGreaterThan(before);
    const requestsBefore = registry.requests.length;
    const second = await c.fetchBlob(ref, good, { signal: signal() });
    expect(second).toBe(first);
    expect(registry.requests.length).toBe(requestsBefore);
    // A new client on the same cache (the next puller process) does not ask either.
    const again = createRegistryClient({ cache: createBlobCache(c.cacheDir), insecureRegistries: [] });
    await again.fetchBlob(ref, good, { signal: signal() });
    expect(registry.requests.length).toBe(requestsBefore);
  });

  it("concurrent fetches of one digest share one download", async () => {
    const c = newClient();
    const ref = parseReference(`${registry.host}/img:1`);
    const before = blobRequests(shared.digest);
    const seen = [0, 0, 0];
    const paths = await Promise.all(
      seen.map((_, i) => c.fetchBlob(ref, shared, { signal: signal(), onProgress: (n) => (seen[i] = n) })),
    );
    expect(new Set(paths).size).toBe(1);
    expect(sha256(readFileSync(paths[0] ?? ""))).toBe(shared.digest);
    // One authenticated GET (the first may also have met the 401 challenge).
    const gets = registry.requests
      .slice(-10)
      .filter((r) => r.path.endsWith(`/blobs/${shared.digest}`) && r.headers.authorization !== undefined);
    expect(gets).toHaveLength(1);
    expect(blobRequests(shared.digest) - before).toBeLessThanOrEqual(2);
    expect(seen[0]).toBe(shared.size);
  });

  it("follows a redirect to another origin without sending Authorization there", async () => {
    const c = newClient();
    const ref = parseReference(`${registry.host}/img:1`);
    const path = await c.fetchBlob(ref, moved, { signal: signal() });
    expect(sha256(readFileSync(path))).toBe(moved.digest);
    const atRegistry = registry.requests.filter((r) => r.path.endsWith(`/blobs/${moved.digest}`));
    expect(atRegistry.at(-1)?.headers.authorization).toBe("Bearer fake-token");
    expect(store.requests).toHaveLength(1);
    expect(store.requests[0]?.path).toBe(`/storage/v2/img/blobs/${moved.digest}`);
    expect(store.requests[0]?.headers.authorization).toBeUndefined();
  });
});

describe("manifest integrity", () => {
  it("schema 1 manifests are refused with SCHEMA1_UNSUPPORTED, by media type or by content", async () => {
    for (const tag of ["1", "unlabelled"]) {
      const error = await failure(
        newClient().resolve(parseReference(`${registry.host}/legacy:${tag}`), DEFAULT_PLATFORM, signal()),
      );
      expect([error.kind, error.reason]).toEqual(["invalid-argument", "SCHEMA1_UNSUPPORTED"]);
      expect(error.message).toContain("schema 1");
    }
  });

  it("a manifest pulled by digest must hash to that digest", async () => {
    const c = newClient();
    const error = await failure(
      c.resolve(parseReference(`${registry.host}/img@${pinnedDigest}`), DEFAULT_PLATFORM, signal()),
    );
    expect(error.reason).toBe("DIGEST_MISMATCH");
    expect(cacheFiles(c.cacheDir)).toEqual([]);
  });

  it("a manifest whose Docker-Content-Digest disagrees with its bytes is refused", async () => {
    const error = await failure(
      newClient().resolve(parseReference(`${registry.host}/img:lying`), DEFAULT_PLATFORM, signal()),
    );
    expect(error.reason).toBe("DIGEST_MISMATCH");
  });
});

describe("basic auth", () => {
  it("sends docker config credentials when the registry asks for Basic, and says so when there are none", async () => {
    const basicRegistry = await startFakeRegistry({
      requireBasic: "carol:pw",
      blobs: { [good.digest]: { bytes: good.bytes } },
    });
    try {
      const ref = parseReference(`${basicRegistry.host}/img:1`);
      const anonymous = await failure(newClient().fetchBlob(ref, good, { signal: signal() }));
      expect([anonymous.kind, anonymous.reason]).toEqual(["permission-denied", "REGISTRY_UNAUTHORIZED"]);

      const configPath = join(work, "basic-config.json");
      writeFileSync(
        configPath,
        JSON.stringify({ auths: { [basicRegistry.host]: { auth: Buffer.from("carol:pw").toString("base64") } } }),
      );
      const c = createRegistryClient({
        cache: createBlobCache(join(work, `cache-${(cacheCount += 1)}`)),
        insecureRegistries: [],
        dockerConfigPath: configPath,
      });
      expect(sha256(readFileSync(await c.fetchBlob(ref, good, { signal: signal() })))).toBe(good.digest);
      const sent = basicRegistry.requests.map((r) => r.headers.authorization);
      expect(sent.at(-1)).toBe(`Basic ${Buffer.from("carol:pw").toString("base64")}`);
    } finally {
      await basicRegistry.stop();
    }
  });
});

describe("schemes", () => {
  /** A fetch that records where it was sent and answers like an unreachable host. */
  function recorder(answer?: (url: string) => Response): { fetch: typeof globalThis.fetch; urls: string[] } {
    const urls: string[] = [];
    return {
      urls,
      fetch: (input) => {
        const url = input instanceof Request ? input.url : String(input);
        urls.push(url);
        if (answer !== undefined) return Promise.resolve(answer(url));
        return Promise.reject(
          new TypeError("fetch failed", { cause: new Error("getaddrinfo ENOTFOUND registry.example.com") }),
        );
      },
    };
  }
  const cache = (): ReturnType<typeof createBlobCache> => createBlobCache(join(work, `cache-${(cacheCount += 1)}`));
  const ref = parseReference("registry.example.com/team/app:1");

  it("uses HTTPS unless the host is loopback or listed as insecure", async () => {
    const secure = recorder();
    const error = await failure(
      createRegistryClient({ cache: cache(), insecureRegistries: [], fetch: secure.fetch }).resolve(
        ref,
        DEFAULT_PLATFORM,
        signal(),
      ),
    );
    expect([error.kind, error.reason]).toEqual(["unavailable", "REGISTRY_UNREACHABLE"]);
    expect(error.message).toContain("ENOTFOUND");
    expect(secure.urls).toEqual(["https://registry.example.com/v2/team/app/manifests/1"]);

    const insecure = recorder();
    await failure(
      createRegistryClient({
        cache: cache(),
        insecureRegistries: ["registry.example.com"],
        fetch: insecure.fetch,
      }).resolve(ref, DEFAULT_PLATFORM, signal()),
    );
    expect(insecure.urls).toEqual(["http://registry.example.com/v2/team/app/manifests/1"]);

    const loopback = recorder();
    await failure(
      createRegistryClient({ cache: cache(), insecureRegistries: [], fetch: loopback.fetch }).resolve(
        parseReference("localhost:5000/app:1"),
        DEFAULT_PLATFORM,
        signal(),
      ),
    );
    expect(loopback.urls).toEqual(["http://localhost:5000/v2/app/manifests/1"]);
  });

  it("refuses a redirect from HTTPS down to plain HTTP", async () => {
    const redirecting = recorder(
      () => new Response(null, { status: 307, headers: { location: "http://cdn.example.com/x" } }),
    );
    const error = await failure(
      createRegistryClient({ cache: cache(), insecureRegistries: [], fetch: redirecting.fetch }).resolve(
        ref,
        DEFAULT_PLATFORM,
        signal(),
      ),
    );
    expect(error.reason).toBe("INSECURE_REDIRECT");
    expect(redirecting.urls).toHaveLength(1);
  });
});
