/**
 * The registry client against real registries: Debian's docker-registry on
 * 127.0.0.1 (one open, one behind token auth with a token service of the
 * test's), holding images this file builds and pushes with skopeo.
 */
import { requireTools } from "@banger/common/testing";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BangerError } from "@banger/common/errors";
import { createBlobCache } from "./blob-cache.js";
import { createRegistryClient, type RegistryClientOptions } from "./client.js";
import { DEFAULT_PLATFORM, MediaType } from "./manifest.js";
import { parseReference, type CredentialHelper } from "@banger/common/registry";
import {
  REGISTRY_TOOLS,
  makeImage,
  makeIndex,
  makeLayer,
  skopeoCopy,
  writeOciLayout,
  type FixtureImage,
} from "../../test-support/registry/oci-image.js";
import { startRegistry, type RegistryProcess } from "../../test-support/registry/registry-process.js";
import { startTokenServer, type TokenServer } from "../../test-support/registry/token-server.js";

const HAVE_REGISTRY_TOOLS = requireTools("the registry client against a real registry", REGISTRY_TOOLS).length === 0;

const live = it.skipIf(!HAVE_REGISTRY_TOOLS);

const ARM64 = { os: "linux", architecture: "arm64" };
const signal = (): AbortSignal => AbortSignal.timeout(20_000);
const sha256File = (path: string): string => `sha256:${createHash("sha256").update(readFileSync(path)).digest("hex")}`;

async function failure(promise: Promise<unknown>): Promise<BangerError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof BangerError) return error;
    throw error;
  }
  throw new Error("expected a failure");
}

/** A fetch that counts the requests it makes. */
function countingFetch(): { fetch: typeof globalThis.fetch; urls: string[] } {
  const urls: string[] = [];
  return {
    urls,
    fetch: (input, init) => {
      urls.push(input instanceof Request ? input.url : String(input));
      return globalThis.fetch(input, init);
    },
  };
}

let work: string;
let registry: RegistryProcess | undefined;
let authRegistry: RegistryProcess | undefined;
let tokens: TokenServer | undefined;
let amd64: FixtureImage;
let arm64: FixtureImage;
let indexDigest: string;
let cacheCount = 0;

function client(extra: Partial<RegistryClientOptions> = {}): ReturnType<typeof createRegistryClient> {
  cacheCount += 1;
  return createRegistryClient({
    cache: createBlobCache(join(work, `cache-${cacheCount}`)),
    insecureRegistries: [],
    ...extra,
  });
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "banger-registry-client-"));
  if (!HAVE_REGISTRY_TOOLS) return;
  const base = makeLayer({ "etc/os-release": "ID=fixture\n", "bin/entry": "#!/bin/sh\necho amd64\n" });
  const baseArm = makeLayer({ "etc/os-release": "ID=fixture\n", "bin/entry": "#!/bin/sh\necho arm64\n" });
  const app = makeLayer({ "srv/app.txt": "hello from the second layer\n" });
  amd64 = makeImage("amd64", [base, app]);
  arm64 = makeImage("arm64", [baseArm, app]);
  const index = makeIndex([amd64, arm64]);
  indexDigest = index.digest;
  const layout = join(work, "layout");
  writeOciLayout(layout, { single: amd64, multi: { index, images: [amd64, arm64] } });

  registry = await startRegistry(join(work, "registry"));
  await skopeoCopy(layout, "single", `${registry.host}/oci/two-layer:1`);
  await skopeoCopy(layout, "single", `${registry.host}/docker/two-layer:1`, { format: "v2s2" });
  await skopeoCopy(layout, "multi", `${registry.host}/oci/multi:1`, { all: true });
  await skopeoCopy(layout, "multi", `${registry.host}/docker/multi:1`, { all: true, format: "v2s2" });

  mkdirSync(join(work, "token"));
  tokens = await startTokenServer({
    dir: join(work, "token"),
    users: { tester: "s3cret" },
    refreshTokens: ["refresh-ok"],
  });
  authRegistry = await startRegistry(join(work, "auth-registry"), {
    realm: tokens.realm,
    service: tokens.service,
    issuer: tokens.issuer,
    rootCertBundle: tokens.certPath,
  });
  await skopeoCopy(layout, "single", `${authRegistry.host}/public/img:1`, { destCreds: "tester:s3cret" });
  await skopeoCopy(layout, "single", `${authRegistry.host}/private/img:1`, { destCreds: "tester:s3cret" });
});

afterAll(async () => {
  await registry?.stop();
  await authRegistry?.stop();
  await tokens?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe("registry client against docker-registry", () => {
  live("resolves a two-layer OCI image and fetches its verified layers", async () => {
    const c = client();
    const ref = parseReference(`${registry?.host}/oci/two-layer:1`);
    const image = await c.resolve(ref, DEFAULT_PLATFORM, signal());
    expect(image.manifestDigest).toBe(amd64.manifest.digest);
    expect(image.indexDigest).toBeUndefined();
    expect(image.manifest.mediaType).toBe(MediaType.ociManifest);
    expect(image.manifest.layers.map((layer) => layer.digest)).toEqual(amd64.layers.map((layer) => layer.digest));
    expect(image.config.rootfs.diff_ids).toEqual(amd64.layers.map((layer) => layer.diffId));
    expect(image.config.config).toEqual({
      Entrypoint: ["/bin/entry"],
      Cmd: ["--serve"],
      Env: ["PATH=/usr/bin:/bin", "ARCH=amd64"],
      User: "1000:1000",
      WorkingDir: "/srv",
    });
    expect(image.platform).toBe("linux/amd64");
    expect(image.platforms).toEqual(["linux/amd64"]);

    for (const [i, layer] of image.manifest.layers.entries()) {
      const progress: number[] = [];
      const path = await c.fetchBlob(ref, layer, { signal: signal(), onProgress: (n) => progress.push(n) });
      expect(path).toBe(c.cache.path(layer.digest));
      expect(sha256File(path)).toBe(layer.digest);
      expect(readFileSync(path)).toEqual(amd64.layers[i]?.bytes);
      expect(progress.at(-1)).toBe(layer.size);
    }
  });

  live("resolves the same image pushed as Docker v2 schema 2", async () => {
    const c = client();
    const ref = parseReference(`${registry?.host}/docker/two-layer:1`);
    const image = await c.resolve(ref, DEFAULT_PLATFORM, signal());
    expect(image.manifest.mediaType).toBe(MediaType.dockerManifest);
    expect(image.manifest.config.mediaType).toBe(MediaType.dockerConfig);
    expect(image.manifest.layers.map((layer) => [layer.mediaType, layer.digest])).toEqual(
      amd64.layers.map((layer) => ["application/vnd.docker.image.rootfs.diff.tar.gzip", layer.digest]),
    );
    expect(image.config.rootfs.diff_ids).toEqual(amd64.layers.map((layer) => layer.diffId));
    expect(image.config.config.Entrypoint).toEqual(["/bin/entry"]);
    for (const layer of image.manifest.layers) {
      expect(sha256File(await c.fetchBlob(ref, layer, { signal: signal() }))).toBe(layer.digest);
    }
    // Pinned by the digest it resolved to, it resolves to the same thing.
    const pinned = await c.resolve(
      parseReference(`${registry?.host}/docker/two-layer@${image.manifestDigest}`),
      DEFAULT_PLATFORM,
      signal(),
    );
    expect(pinned.manifestDigest).toBe(image.manifestDigest);
  });

  live("picks linux/amd64 from an OCI index by default, arm64 when asked, and lists the platforms", async () => {
    const c = client();
    const ref = parseReference(`${registry?.host}/oci/multi:1`);
    const amd = await c.resolve(ref, DEFAULT_PLATFORM, signal());
    expect(amd.indexDigest).toBe(indexDigest);
    expect(amd.manifestDigest).toBe(amd64.manifest.digest);
    expect(amd.platform).toBe("linux/amd64");
    expect(amd.platforms).toEqual(["linux/amd64", "linux/arm64"]);
    const arm = await c.resolve(ref, ARM64, signal());
    expect(arm.manifestDigest).toBe(arm64.manifest.digest);
    expect(arm.platform).toBe("linux/arm64");
    expect(arm.config.architecture).toBe("arm64");
    expect(arm.config.config.Env).toContain("ARCH=arm64");
  });

  live("picks from a Docker manifest list the same way", async () => {
    const c = client();
    const ref = parseReference(`${registry?.host}/docker/multi:1`);
    const amd = await c.resolve(ref, DEFAULT_PLATFORM, signal());
    const arm = await c.resolve(ref, ARM64, signal());
    expect(amd.manifest.mediaType).toBe(MediaType.dockerManifest);
    expect([amd.config.architecture, arm.config.architecture]).toEqual(["amd64", "arm64"]);
    expect(amd.platforms).toEqual(["linux/amd64", "linux/arm64"]);
    expect(arm.manifest.layers.map((layer) => layer.digest)).toEqual(arm64.layers.map((layer) => layer.digest));
  });

  live("a platform the image does not offer is PLATFORM_NOT_FOUND, naming those it does", async () => {
    const c = client();
    const multi = await failure(
      c.resolve(parseReference(`${registry?.host}/oci/multi:1`), { os: "linux", architecture: "riscv64" }, signal()),
    );
    expect(multi.kind).toBe("not-found");
    expect(multi.reason).toBe("PLATFORM_NOT_FOUND");
    expect(multi.message).toContain("linux/amd64, linux/arm64");
    const single = await failure(c.resolve(parseReference(`${registry?.host}/oci/two-layer:1`), ARM64, signal()));
    expect(single.reason).toBe("PLATFORM_NOT_FOUND");
    expect(single.message).toContain("linux/amd64 only");
  });

  live("a missing tag or digest is MANIFEST_NOT_FOUND", async () => {
    const c = client();
    const tag = await failure(
      c.resolve(parseReference(`${registry?.host}/oci/two-layer:nope`), DEFAULT_PLATFORM, signal()),
    );
    expect([tag.kind, tag.reason]).toEqual(["not-found", "MANIFEST_NOT_FOUND"]);
    const repo = await failure(c.resolve(parseReference(`${registry?.host}/no/such:1`), DEFAULT_PLATFORM, signal()));
    expect(repo.reason).toBe("MANIFEST_NOT_FOUND");
    const digest = await failure(
      c.resolve(parseReference(`${registry?.host}/oci/two-layer@sha256:${"0".repeat(64)}`), DEFAULT_PLATFORM, signal()),
    );
    expect(digest.reason).toBe("MANIFEST_NOT_FOUND");
  });

  live("a cached image resolved by digest and fetched again makes no request at all", async () => {
    const cacheDir = join(work, "warm-cache");
    const cold = createRegistryClient({ cache: createBlobCache(cacheDir), insecureRegistries: [] });
    const tagged = parseReference(`${registry?.host}/oci/multi:1`);
    const first = await cold.resolve(tagged, DEFAULT_PLATFORM, signal());
    for (const layer of first.manifest.layers) await cold.fetchBlob(tagged, layer, { signal: signal() });

    const counting = countingFetch();
    const warm = createRegistryClient({
      cache: createBlobCache(cacheDir),
      insecureRegistries: [],
      fetch: counting.fetch,
    });
    const pinned = parseReference(`${registry?.host}/oci/multi@${indexDigest}`);
    const again = await warm.resolve(pinned, DEFAULT_PLATFORM, signal());
    expect(again.manifestDigest).toBe(first.manifestDigest);
    expect(again.config).toEqual(first.config);
    let progressCalls = 0;
    for (const layer of again.manifest.layers) {
      await warm.fetchBlob(pinned, layer, { signal: signal(), onProgress: () => (progressCalls += 1) });
    }
    expect(counting.urls).toEqual([]);
    expect(progressCalls).toBe(0);
    expect(readdirSync(join(cacheDir, "sha256")).filter((name) => name.endsWith(".tmp"))).toEqual([]);
  });

  live("a registry that refuses connections is REGISTRY_UNREACHABLE", async () => {
    const port = await new Promise<number>((resolve) => {
      const server = createServer();
      server.listen(0, "127.0.0.1", () => {
        const address = server.address();
        server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 0));
      });
    });
    const error = await failure(client().resolve(parseReference(`127.0.0.1:${port}/x:1`), DEFAULT_PLATFORM, signal()));
    expect([error.kind, error.reason]).toEqual(["unavailable", "REGISTRY_UNREACHABLE"]);
    expect(error.message).toContain("ECONNREFUSED");
  });
});

describe("registry client with token auth", () => {
  const configFile = (content: unknown): string => {
    const path = join(work, `docker-config-${(cacheCount += 1)}.json`);
    writeFileSync(path, JSON.stringify(content));
    return path;
  };
  const b64 = (text: string): string => Buffer.from(text).toString("base64");

  live("pulls a public repository anonymously, reusing one token for the scope", async () => {
    const c = client();
    const ref = parseReference(`${authRegistry?.host}/public/img:1`);
    const before = tokens?.requests.length ?? 0;
    const image = await c.resolve(ref, DEFAULT_PLATFORM, signal());
    await Promise.all(image.manifest.layers.map((layer) => c.fetchBlob(ref, layer, { signal: signal() })));
    const asked = tokens?.requests.slice(before) ?? [];
    expect(asked).toHaveLength(1);
    expect(asked[0]).toMatchObject({
      method: "GET",
      scopes: ["repository:public/img:pull"],
      authorization: undefined,
      status: 200,
    });
    expect(image.manifestDigest).toBe(amd64.manifest.digest);
  });

  live("a private repository without credentials is PERMISSION_DENIED (REGISTRY_UNAUTHORIZED)", async () => {
    const error = await failure(
      client().resolve(parseReference(`${authRegistry?.host}/private/img:1`), DEFAULT_PLATFORM, signal()),
    );
    expect([error.kind, error.reason]).toEqual(["permission-denied", "REGISTRY_UNAUTHORIZED"]);
    expect(error.message).toContain("private/img");
  });

  live("a private repository with credentials from docker config.json resolves and downloads", async () => {
    const host = authRegistry?.host ?? "";
    const c = client({ dockerConfigPath: configFile({ auths: { [host]: { auth: b64("tester:s3cret") } } }) });
    const ref = parseReference(`${host}/private/img:1`);
    const before = tokens?.requests.length ?? 0;
    const image = await c.resolve(ref, DEFAULT_PLATFORM, signal());
    const path = await c.fetchBlob(ref, image.manifest.layers[1] ?? image.manifest.config, { signal: signal() });
    expect(sha256File(path)).toBe(amd64.layers[1]?.digest);
    expect(tokens?.requests.slice(before).map((r) => r.authorization)).toEqual([`Basic ${b64("tester:s3cret")}`]);
  });

  live("credentials the caller passes win over the docker config for their registry", async () => {
    const host = authRegistry?.host ?? "";
    const ref = parseReference(`${host}/private/img:1`);
    const wrongConfig = configFile({ auths: { [host]: { username: "tester", password: "wrong" } } });
    const c = client({
      dockerConfigPath: wrongConfig,
      credentials: new Map([[host, { kind: "basic", username: "tester", password: "s3cret" }]]),
    });
    const before = tokens?.requests.length ?? 0;
    expect((await c.resolve(ref, DEFAULT_PLATFORM, signal())).manifestDigest).toBe(amd64.manifest.digest);
    expect(tokens?.requests.slice(before).map((r) => r.authorization)).toEqual([`Basic ${b64("tester:s3cret")}`]);
  });

  live("wrong credentials are PERMISSION_DENIED", async () => {
    const host = authRegistry?.host ?? "";
    const c = client({
      dockerConfigPath: configFile({ auths: { [host]: { username: "tester", password: "wrong" } } }),
    });
    const error = await failure(c.resolve(parseReference(`${host}/private/img:1`), DEFAULT_PLATFORM, signal()));
    expect([error.kind, error.reason]).toEqual(["permission-denied", "REGISTRY_UNAUTHORIZED"]);
    expect(error.message).toContain("rejected the credentials");
  });

  live("credentials from a credential helper, and an identity token exchanged by OAuth2 POST", async () => {
    const host = authRegistry?.host ?? "";
    const asked: string[] = [];
    const helper: CredentialHelper = (name, serverUrl) => {
      asked.push(`${name} ${serverUrl}`);
      return Promise.resolve(
        name === "store" ? { username: "tester", secret: "s3cret" } : { username: "<token>", secret: "refresh-ok" },
      );
    };
    const ref = parseReference(`${host}/private/img:1`);
    const viaStore = client({ dockerConfigPath: configFile({ credsStore: "store" }), credentialHelper: helper });
    expect((await viaStore.resolve(ref, DEFAULT_PLATFORM, signal())).manifestDigest).toBe(amd64.manifest.digest);
    const before = tokens?.requests.length ?? 0;
    const viaRefresh = client({
      dockerConfigPath: configFile({ credHelpers: { [host]: "oauth" } }),
      credentialHelper: helper,
    });
    expect((await viaRefresh.resolve(ref, DEFAULT_PLATFORM, signal())).manifestDigest).toBe(amd64.manifest.digest);
    expect(asked).toEqual([`store ${host}`, `oauth ${host}`]);
    expect(tokens?.requests.slice(before).map((r) => [r.method, r.status])).toEqual([["POST", 200]]);
  });
});
