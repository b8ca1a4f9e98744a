/**
 * Real Debian images through banger's puller: bookworm minbase (the shape of
 * docker.io/library/debian:bookworm: no init, no SSH server) and minbase +
 * systemd-sysv + openssh-server, built by test/e2e/support/debian-images.mjs
 * with mmdebstrap from Debian's archive (cached between local runs; built
 * once per run on a fresh machine), pushed to a real registry on 127.0.0.1
 * and pulled with the CLI through the real services.
 *
 * The guests' own cases (create, exec, ssh, run, workspaces, stop, start,
 * delete) come with the guest kit.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HAVE_REGISTRY_TOOLS } from "../../services/image-puller/src/registry/testing/oci-image.js";
import {
  startRegistry,
  type RegistryProcess,
} from "../../services/image-puller/src/registry/testing/registry-process.js";
import { ROOT, startCluster, type Cluster } from "../integration/harness.js";
import { IS_ROOT } from "../integration/netns.js";

const missing = [
  !IS_ROOT && "root",
  !existsSync("/usr/bin/mmdebstrap") && "mmdebstrap",
  !HAVE_REGISTRY_TOOLS && "docker-registry and skopeo",
].filter((m): m is string => typeof m === "string");
if (missing.length > 0) console.warn(`SKIPPING the Debian images: this machine lacks ${missing.join(", ")}`);
const debian = describe.skipIf(missing.length > 0);

let cluster: Cluster;
let registry: RegistryProcess;
let work: string;

/** Builds (or takes from the cache) and pushes one image; prints what it took. */
function buildAndPush(image: string): string {
  const reference = `${registry.host}/debian/${image}:latest`;
  const t = Date.now();
  const out = execFileSync(
    process.execPath,
    [join(ROOT, "test/e2e/support/debian-images.mjs"), "--image", image, "--push", reference],
    { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] },
  );
  const built = JSON.parse(out) as { cached: boolean; buildSeconds: number; tarBytes: number; layerBytes: number };
  const mib = (bytes: number) => `${(bytes / 1048576).toFixed(1)} MiB`;
  console.log(
    `e2e: debian ${image}: ${built.cached ? "from the cache" : `built in ${built.buildSeconds.toFixed(1)} s`}, ` +
      `tar ${mib(built.tarBytes)}, layer ${mib(built.layerBytes)}, ready and pushed in ${((Date.now() - t) / 1000).toFixed(1)} s`,
  );
  return reference;
}

const references: Record<string, string> = {};

beforeAll(async () => {
  if (missing.length > 0) return;
  work = mkdtempSync(join(tmpdir(), "banger-debian-"));
  registry = await startRegistry(join(work, "registry"));
  for (const image of ["minbase", "systemd-ssh"]) references[image] = buildAndPush(image);
  cluster = await startCluster();
}, 1_200_000);

afterAll(async () => {
  if (missing.length > 0) return;
  await cluster?.shutdown();
  await registry.stop();
  rmSync(work, { recursive: true, force: true });
});

debian("real Debian images (mmdebstrap) through banger's puller", () => {
  it("pulls bookworm minbase", async () => {
    const t = Date.now();
    const pulled = await cluster.cli(["image", "pull", references["minbase"] ?? "", "--name", "debian-minbase"]);
    expect(pulled.code, pulled.stderr).toBe(0);
    console.log(`e2e: debian minbase pulled in ${((Date.now() - t) / 1000).toFixed(1)} s`);
    const shown = JSON.parse((await cluster.cli(["image", "show", "debian-minbase", "--json"])).stdout) as unknown;
    expect(JSON.stringify(shown)).toContain("debian-minbase");
  }, 300_000);

  it("pulls minbase + systemd + openssh-server, systemd's escaped unit names kept exactly", async () => {
    const pulled = await cluster.cli(["image", "pull", references["systemd-ssh"] ?? "", "--name", "debian-systemd"]);
    expect(pulled.code, pulled.stderr).toBe(0);
    const rootfs = join(cluster.stateDir, "images", "debian-systemd", "rootfs.ext4");
    const units = execFileSync("debugfs", ["-R", "ls -p /usr/lib/systemd/system", rootfs], {
      encoding: "latin1",
      stdio: ["ignore", "pipe", "ignore"],
    });
    expect(units).toContain("/system-systemd\\x2dcryptsetup.slice/");
    execFileSync("e2fsck", ["-fn", rootfs], { stdio: "ignore" }); // throws unless the image is clean
  }, 300_000);
});
