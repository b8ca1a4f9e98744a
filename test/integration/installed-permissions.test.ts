/**
 * The permission model of the installed units (deploy/systemd), without
 * systemd: bangerd as the owner with group `banger` and umask 0027, the image
 * puller as its own user (umask 0022) writing into the setgid staging
 * directory, and the helper as root in both groups but WITHOUT
 * CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER, as its unit's
 * CapabilityBoundingSet leaves it. An image pulled from a real registry then
 * becomes a VM that is created, stopped, started and deleted: every file the
 * helper or the puller must reach is reachable through the groups alone.
 *
 * Stands in for systemd: setpriv sets each service's credentials, umask and
 * bounding set; the runtime directory is world-writable and the puller's
 * socket is handed to the owner (the socket units' SocketUser=). No KVM or
 * Firecracker here: the helper launches test-fixtures/fake-vmm.mjs.
 */
import { EXT4_TOOLS, requireTools } from "@banger/common/testing";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
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
import { FAKE_VMM, OWNER } from "./fake-vm-cluster.js";
import { OWNER_CAN_READ_CHECKOUT, startCluster, type Cluster } from "./harness.js";
import { IS_ROOT, createNetNs, type NetNs } from "./netns.js";

const HAVE_REGISTRY_TOOLS =
  requireTools("the services under the units' permissions", [...REGISTRY_TOOLS, ...EXT4_TOOLS]).length === 0;

const GROUP = "banger-it";
const PULLER = "banger-puller-it";
const live = describe.skipIf(!IS_ROOT || !OWNER_CAN_READ_CHECKOUT || !HAVE_REGISTRY_TOOLS);

let ns: NetNs;
let cluster: Cluster;
let registry: RegistryProcess;
let work: string;
let ids: { bangerGid: number; pullerUid: number; pullerGid: number };

const idOf = (db: string, name: string) =>
  Number(execFileSync("getent", [db, name], { encoding: "utf8" }).split(":")[2]);

beforeAll(async () => {
  if (!IS_ROOT || !OWNER_CAN_READ_CHECKOUT || !HAVE_REGISTRY_TOOLS) return;
  console.log("no KVM or Firecracker here: VMs run under test-fixtures/fake-vmm.mjs; setpriv stands in for the units");
  // The accounts `banger system install` makes (systemd-sysusers there), under test names.
  if (spawnSync("getent", ["group", GROUP]).status !== 0) execFileSync("groupadd", ["--system", GROUP]);
  if (spawnSync("getent", ["passwd", PULLER]).status !== 0) {
    execFileSync("useradd", ["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", PULLER]);
  }
  ids = { bangerGid: idOf("group", GROUP), pullerUid: idOf("passwd", PULLER), pullerGid: idOf("group", PULLER) };

  work = mkdtempSync(join(tmpdir(), "banger-installed-"));
  registry = await startRegistry(join(work, "registry"));
  const layout = join(work, "layout");
  writeOciLayout(layout, { v1: makeImage("amd64", [makeLayer({ "etc/os-release": "ID=tiny\n" })]) });
  await skopeoCopy(layout, "v1", `${registry.host}/tiny/os:v1`);

  ns = createNetNs();
  cluster = await startCluster({
    owner: OWNER,
    netns: ns.name,
    helperArgs: ["--firecracker", FAKE_VMM],
    installed: ids,
    configToml: "[image]\nmin_rootfs_mib = 64\n[vm]\nwork_disk_mib = 64\n",
  });
  const pkg = join(cluster.dir, "kernel-pkg");
  mkdirSync(join(pkg, "boot"), { recursive: true });
  writeFileSync(
    join(pkg, "boot", "vmlinux-6.1.0-27-amd64"),
    Buffer.concat([Buffer.from("\x7fELF"), Buffer.alloc(4096)]),
  );
  execFileSync("chown", ["-R", `${OWNER}:${OWNER}`, pkg]);
  const imported = await cluster.cli(["kernel", "import", "k61", pkg]);
  if (imported.code !== 0) throw new Error(imported.stderr);
}, 120_000);

afterAll(async () => {
  if (!IS_ROOT || !OWNER_CAN_READ_CHECKOUT || !HAVE_REGISTRY_TOOLS) return;
  spawnSync("pkill", ["-f", `fake-vmm.mjs --api-sock ${cluster.runtimeDir}/`]);
  await cluster.shutdown();
  ns.remove();
  await registry.stop();
  rmSync(work, { recursive: true, force: true });
});

const mode = (path: string) => {
  const stats = statSync(path);
  return { uid: stats.uid, gid: stats.gid, mode: (stats.mode & 0o7777).toString(8) };
};

live("the installed permission model", () => {
  it("the helper runs without DAC override, the puller as its own user, bangerd with group banger", () => {
    const status = (pid: number | undefined) => execFileSync("cat", [`/proc/${pid}/status`], { encoding: "utf8" });
    const capBnd = /CapBnd:\s+([0-9a-f]+)/.exec(status(cluster.service("privileged").child.pid))?.[1] ?? "";
    // CAP_DAC_OVERRIDE (1), CAP_DAC_READ_SEARCH (2), CAP_FOWNER (3) are out.
    expect(BigInt(`0x${capBnd}`) & 0b1110n).toBe(0n);
    expect(status(cluster.service("image-puller").child.pid)).toMatch(new RegExp(`Uid:\\s+${ids.pullerUid}\\s`));
    expect(status(cluster.service("orchestrator").child.pid)).toMatch(new RegExp(`Gid:\\s+${ids.bangerGid}\\s`));
  });

  it("pulls an image (the puller writes the staging directory), then creates, stops, starts and deletes a VM", async () => {
    const run = async (args: string[]) => {
      const result = await cluster.cli(args);
      if (result.code !== 0) {
        const op = /\((op-[0-9a-f]{12})\)/.exec(result.stderr)?.[1] ?? "";
        console.log(
          "warnings and errors the services logged for it:",
          JSON.stringify(cluster.linesWithOpId(op).filter((l) => Number(l["level"]) >= 40 || l["err"])),
        );
      }
      expect(result.code, `${args.join(" ")}\n${result.stderr}`).toBe(0);
      return result;
    };
    await run(["image", "pull", `${registry.host}/tiny/os:v1`, "--name", "tiny"]);
    const image = join(cluster.stateDir, "images", "tiny");
    // The orchestrator publishes its own copy of what the puller built (the helper attaches only the
    // owner's files), in a directory the puller can no longer write.
    expect(mode(join(image, "rootfs.ext4"))).toMatchObject({ uid: OWNER, mode: "640" });
    expect(mode(image)).toMatchObject({ gid: ids.pullerGid, mode: "750" });

    await run(["vm", "create", "--name", "box", "--image", "tiny", "--no-ssh-wait"]);
    const id = (JSON.parse((await run(["vm", "show", "box", "--json"])).stdout) as { id: string }[])[0]?.id ?? "";
    expect(mode(join(cluster.stateDir, "vms", id))).toEqual({ uid: OWNER, gid: ids.bangerGid, mode: "750" });
    expect(mode(join(cluster.stateDir, "vms", id, "root.ext4"))).toEqual({
      uid: OWNER,
      gid: ids.bangerGid,
      mode: "660",
    });
    await run(["vm", "stop", "box"]);
    await run(["vm", "start", "box", "--no-ssh-wait"]);
    await run(["vm", "delete", "box"]);
    expect(JSON.parse((await run(["vm", "list", "--json"])).stdout)).toEqual([]);
    await run(["image", "delete", "tiny"]);
  }, 120_000);

  it("builds the built-in tiny as the puller's user, published as the owner's copy", async () => {
    const pulled = await cluster.cli(["image", "pull", "tiny"]);
    expect(pulled.code, pulled.stderr).toBe(0);
    const image = join(cluster.stateDir, "images", "tiny");
    expect(mode(join(image, "rootfs.ext4"))).toMatchObject({ uid: OWNER, mode: "640" });
    const shown = JSON.parse((await cluster.cli(["image", "show", "tiny", "--json"])).stdout) as { source: string }[];
    expect(shown[0]?.source).toBe("IMAGE_SOURCE_BUILTIN");
    expect((await cluster.cli(["image", "delete", "tiny"])).code).toBe(0);
  }, 120_000);
});
