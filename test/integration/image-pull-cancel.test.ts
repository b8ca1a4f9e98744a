/**
 * Ctrl-C during `banger image pull` from a real registry (Debian's docker-registry on 127.0.0.1) through the
 * real three services: the blobs come through a proxy in this test that holds them, so the pull is caught in
 * its layers stage; the CLI cancels, shows the unwind and exits 130, the operation ends CANCELLED, and no image,
 * staging directory or partial blob is left.
 */
import { EXT4_TOOLS, requireTools } from "@banger/common/testing";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { createServer, request, type Server, type ServerResponse } from "node:http";
import { spawn } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  REGISTRY_TOOLS,
  makeImage,
  makeLayer,
  skopeoCopy,
  writeOciLayout,
} from "../../services/image-puller/test-support/registry/oci-image.js";
import {
  startRegistry,
  type RegistryProcess,
} from "../../services/image-puller/test-support/registry/registry-process.js";
import { BANGER, startCluster, type Cluster } from "./harness.js";

const RUNS = requireTools("cancelling a pull from a real registry", [...REGISTRY_TOOLS, ...EXT4_TOOLS]).length === 0;

let cluster: Cluster;
let registry: RegistryProcess;
let proxy: Server;
let proxyHost: string;
let work: string;
/** The digest of the image's one layer: the blob the proxy holds. */
let layer = "";
/** Blob answers the proxy holds back, to send when the test ends. */
const held: ServerResponse[] = [];

beforeAll(async () => {
  if (!RUNS) return;
  cluster = await startCluster();
  work = mkdtempSync(join(tmpdir(), "banger-pull-cancel-"));
  registry = await startRegistry(join(work, "registry"));
  const layout = join(work, "layout");
  writeOciLayout(layout, {
    v1: makeImage("amd64", [makeLayer({ "etc/os-release": "ID=tiny\n" })]),
  });
  await skopeoCopy(layout, "v1", `${registry.host}/tiny/os:v1`);
  const [hostname, port] = registry.host.split(":");
  const manifest = (await (
    await fetch(`http://${registry.host}/v2/tiny/os/manifests/v1`, {
      headers: { accept: "application/vnd.oci.image.manifest.v1+json" },
    })
  ).json()) as { layers: { digest: string }[] };
  layer = manifest.layers[0]?.digest ?? "";
  // Passes everything to the registry but the layer's blob, which it never answers.
  proxy = createServer((req, res) => {
    if ((req.url ?? "").endsWith(`/blobs/${layer}`)) {
      held.push(res);
      return;
    }
    const upstream = request(
      { hostname, port: Number(port), path: req.url, method: req.method, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on("error", () => res.destroy());
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const address = proxy.address();
  proxyHost = `127.0.0.1:${typeof address === "object" && address ? address.port : 0}`;
}, 120_000);

afterAll(async () => {
  if (!RUNS) return;
  for (const res of held) res.destroy();
  proxy.closeAllConnections();
  await new Promise((resolve) => proxy.close(resolve));
  await cluster.shutdown();
  await registry.stop();
  rmSync(work, { recursive: true, force: true });
});

/** Files under `dir` (relative names), or none when it does not exist. */
function filesUnder(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir, { recursive: true }).map(String).sort() : [];
}

describe.skipIf(!RUNS)("Ctrl-C during image pull", () => {
  it("cancels the pull in its layers stage: exit 130, CANCELLED, no image, no staging, no partial blob", async () => {
    expect(layer).toMatch(/^sha256:[0-9a-f]{64}$/);
    const stagingBefore = filesUnder(join(cluster.stateDir, "images", ".staging"));
    const child = spawn(BANGER, ["image", "pull", `${proxyHost}/tiny/os:v1`, "--name", "held"], {
      env: { ...process.env, BANGER_SOCKET: "", BANGER_RUNTIME_DIR: cluster.runtimeDir },
    });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    const deadline = Date.now() + 60_000;
    // The layer's blob was asked for and is held: the pull waits in its layers stage.
    while (held.length === 0 || !/\n {2}layers +…\n/.test(stderr)) {
      if (Date.now() > deadline || child.exitCode !== null)
        throw new Error(`the pull did not reach its layers: ${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const op = /\((op-[0-9a-f]{12})\)/.exec(stderr)?.[1] ?? "";
    child.kill("SIGINT");
    expect(await exited, stderr).toBe(130);
    expect(stderr).toContain(`cancelling ${op}: it unwinds what it made`);
    expect(stderr.endsWith(`banger: cancelled at layers; what it had made was unwound (${op})\n`), stderr).toBe(true);
    const shown = JSON.parse((await cluster.cli(["op", "show", op, "--json"])).stdout) as {
      state: string;
      error: { reason: string; stage: string };
    };
    expect([shown.state, shown.error.reason, shown.error.stage]).toEqual([
      "OPERATION_STATE_CANCELLED",
      "CANCELLED",
      "layers",
    ]);
    expect(JSON.parse((await cluster.cli(["image", "list", "--json"])).stdout)).toEqual([]);
    expect(existsSync(join(cluster.stateDir, "images", "held"))).toBe(false);
    expect(filesUnder(join(cluster.stateDir, "images", ".staging"))).toEqual(stagingBefore);
    // The puller's cache keeps whole blobs only: nothing of the held one.
    const cached = filesUnder(join(cluster.stateDir, "cache"));
    expect(cached.filter((f) => f.endsWith(".tmp") || f.includes(layer.slice("sha256:".length)))).toEqual([]);
  }, 120_000);
});
