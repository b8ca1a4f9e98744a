/**
 * The first VM on a fresh machine with no network: the three real services
 * (the helper, the orchestrator and the puller all in a network namespace
 * with no uplink, so no registry and no name server can be reached), the
 * qemu-microvm driver under TCG, and nothing imported or pulled by hand.
 * `banger vm run -- uname -a` imports this host's installed kernel
 * (linux-image-amd64, with only the modules banger's initramfs loads) and
 * builds its initramfs, finds the default image (debian) unreachable, builds
 * the built-in image `tiny` from the host's busybox instead, boots it and
 * runs the command, saying each of those on stderr.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MDWE_WRAPPER, OWNER_CAN_READ_CHECKOUT, startCluster, type Cluster } from "../integration/harness.js";
import { IS_ROOT, createNetNs, type NetNs } from "../integration/netns.js";
import { KERNEL_VERSION, TCG_GUEST_CONFIG } from "./support/kernel-package.js";

const OWNER = 1000;
const QEMU = "/usr/bin/qemu-system-x86_64";
const missing = [
  !IS_ROOT && "root",
  !OWNER_CAN_READ_CHECKOUT && "a checkout uid 1000 can read",
  !existsSync(QEMU) && "qemu-system-x86",
  !KERNEL_VERSION && "linux-image-amd64",
  !existsSync("/bin/busybox") && "busybox-static",
  // banger's initramfs bundles the guest kit from these.
  !existsSync("/usr/sbin/dropbear") && "dropbear-bin",
  !existsSync("/usr/sbin/qemu-ga") && "qemu-guest-agent",
  !existsSync("/usr/bin/patchelf") && "patchelf",
].filter((m): m is string => typeof m === "string");
if (missing.length > 0) console.warn(`SKIPPING the offline first-VM suite: this machine lacks ${missing.join(", ")}`);
if (!MDWE_WRAPPER) console.warn("no PR_SET_MDWE here: the helper and its VMMs run without the W^X refusal of its unit");
const e2e = describe.skipIf(missing.length > 0);

let ns: NetNs;
let cluster: Cluster;
const started = Date.now();

/** Runs a CLI command, prints its time, and expects `expectCode`. */
async function cli(args: string[], expectCode = 0) {
  const t = Date.now();
  const result = await cluster.cli(args);
  console.log(`e2e: banger ${args.join(" ")} -> ${result.code} in ${((Date.now() - t) / 1000).toFixed(1)} s`);
  expect(result.code, `${args.join(" ")}\n${result.stderr}`).toBe(expectCode);
  return result;
}

beforeAll(async () => {
  if (missing.length > 0) return;
  ns = createNetNs();
  // No uplink: only lo, and the bridge and taps banger makes.
  expect(ns.links().map((l) => l.ifname)).toEqual(["lo"]);
  cluster = await startCluster({
    owner: OWNER,
    netns: ns.name,
    orchestratorInNetns: true,
    pullerInNetns: true,
    helperUnitSandbox: true,
    configToml: TCG_GUEST_CONFIG,
  });
}, 120_000);

afterAll(async () => {
  if (missing.length > 0) return;
  spawnSync("pkill", ["-9", "-f", `qemu-system-x86_64.*${cluster.runtimeDir}/`]);
  await cluster.shutdown();
  ns.remove();
  console.log(`e2e: offline suite ${((Date.now() - started) / 1000).toFixed(1)} s`);
});

e2e("the first VM, offline, with embedded defaults (qemu-microvm, TCG)", () => {
  it("vm run -- uname -a: imports the host's kernel, stands in tiny for the unreachable default image, runs", async () => {
    expect(JSON.parse((await cli(["kernel", "list", "--json"])).stdout)).toEqual([]);
    expect(JSON.parse((await cli(["image", "list", "--json"])).stdout)).toEqual([]);

    const run = await cli(["vm", "run", "--name", "first", "--ssh-timeout", "240", "--", "uname", "-a"]);
    console.log(`e2e: vm run said on stderr:\n${run.stderr}`);
    const version = KERNEL_VERSION ?? "";
    expect(run.stdout).toMatch(new RegExp(`^Linux first ${version.replace(/\./g, "\\.")} `));
    expect(run.stderr).toContain(
      `no kernel was imported: imported this host's kernel ${version} (/boot/vmlinuz-${version}, with the modules ` +
        `banger's initramfs loads) as host-${version}, the default kernel, and built banger's initramfs for it`,
    );
    expect(run.stderr).toMatch(
      /resolve-image\s+done \([0-9.]+ s\): the default image debian could not be pulled \(registry host registry-1\.docker\.io is unreachable: .*\): using the built-in image tiny instead/,
    );

    // What it left: the host's kernel as the default, with banger's initramfs and its kit; tiny, built here.
    const kernels = JSON.parse((await cli(["kernel", "list", "--json"])).stdout) as {
      name: string;
      isDefault: boolean;
      initrdBytes: string;
    }[];
    expect(kernels).toMatchObject([{ name: `host-${version}`, isDefault: true }]);
    expect(Number(kernels[0]?.initrdBytes)).toBeGreaterThan(0);
    const modules = join(cluster.stateDir, "kernels", `host-${version}`, "modules");
    expect(existsSync(join(modules, "modules.dep"))).toBe(true);
    // Only the modules banger's initramfs loads were copied, not the whole 400 MB tree.
    const copied = execFileSync("find", [modules, "-name", "*.ko*"], { encoding: "utf8" }).split("\n").filter(Boolean);
    expect(copied.length).toBeGreaterThan(0);
    expect(copied.length).toBeLessThan(30);
    expect(readdirSync(join(cluster.stateDir, "kernels", `host-${version}`)).sort()).toEqual([
      "initrd",
      "initrd.kit.json",
      "modules",
      "vmlinux",
    ]);
    const images = JSON.parse((await cli(["image", "list", "--json"])).stdout) as { name: string; source: string }[];
    expect(images.map((i) => [i.name, i.source])).toEqual([["tiny", "IMAGE_SOURCE_BUILTIN"]]);
    const shown = JSON.parse((await cli(["vm", "show", "first", "--json"])).stdout) as {
      image: string;
      kernel: string;
    }[];
    expect(shown[0]).toMatchObject({ image: "tiny", kernel: `host-${version}` });

    // The agent of the kit answers in tiny too, and the VM stops and goes.
    expect((await cli(["vm", "exec", "first", "--", "cat", "/etc/os-release"])).stdout).toContain("banger tiny");
    await cli(["vm", "delete", "first"]);
  }, 600_000);

  it("a create that names the default image itself is not stood in for: the registry's failure is the answer", async () => {
    const result = await cli(["vm", "create", "--name", "named", "--image", "debian"], 1);
    expect(result.stderr).toMatch(
      /banger: failed at resolve-image: registry host registry-1\.docker\.io is unreachable: .*\(op-[0-9a-f]{12}\)\n$/,
    );
    expect(JSON.parse((await cli(["vm", "list", "--json"])).stdout)).toEqual([]);
  }, 120_000);
});
