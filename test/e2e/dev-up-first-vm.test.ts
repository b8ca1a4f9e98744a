/**
 * The first VM on a fresh machine with no network, as the README's quick start has it: `banger dev up`
 * with no directories named (root, the owner given with --owner as sudo would give it) in a network
 * namespace with no uplink, so no registry and no name server can be reached, and the owner's CLI with
 * no variable set (it finds dev up's sockets in /run/banger-dev/<uid>). The qemu-microvm driver under
 * TCG, nothing imported or pulled by hand: `banger vm run -- uname -a` imports this host's installed
 * kernel (linux-image-amd64, with only the modules banger's initramfs loads) and builds its initramfs,
 * finds the default image (debian) unreachable, builds the built-in image `tiny` from the host's busybox
 * instead, boots it and runs the command, saying each of those on stderr. Then a VM kept running answers
 * `dig @<bridge> <vm>.vm` on the DNS sockets dev up bound as root for the owner's orchestrator, and once
 * it is deleted and dev up stopped, nothing of it is left.
 *
 * The owner is a uid without a passwd entry: its home (config.toml, SSH key) is the state directory.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BANGER, waitUntil, type CliResult } from "../integration/harness.js";
import { createNetNs, type NetNs } from "../integration/netns.js";
import { guestSuiteMissing, leftoversOf } from "./support/guest-env.js";
import { KERNEL_VERSION, TCG_GUEST_CONFIG } from "./support/kernel-package.js";

/** No passwd entry: dev up gives it the state directory as its home. */
const OWNER = 1234;
const RUNTIME_DIR = `/run/banger-dev/${OWNER}`;
const STATE_DIR = `/var/lib/banger-dev/${OWNER}`;
/** bangerd's default bridge address (TCG_GUEST_CONFIG names none). */
const BRIDGE = "172.30.0.1";
const ownerCanRead = (path: string) =>
  spawnSync("setpriv", ["--reuid", String(OWNER), "--regid", String(OWNER), "--clear-groups", "test", "-r", path])
    .status === 0;
const lacking = guestSuiteMissing("the dev up first-VM suite", ["python3", "dig"], { registry: false });
const missing = lacking.length === 0 && !ownerCanRead(BANGER) ? [`a checkout uid ${OWNER} can read (o+rX)`] : lacking;
if (lacking.length === 0 && missing.length > 0) {
  console.warn(`SKIPPING the dev up first-VM suite: it needs ${missing.join(", ")}`);
}
const e2e = describe.skipIf(missing.length > 0);

let ns: NetNs;
let dev: ChildProcess;
let devErr = "";
let exited: Promise<number | null>;
const started = Date.now();

/** The CLI as the owner, with no variable telling it where banger runs. */
function asOwner(args: readonly string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(BANGER, args, {
      uid: OWNER,
      gid: OWNER,
      cwd: "/",
      env: { ...process.env, BANGER_SOCKET: "", BANGER_RUNTIME_DIR: "", XDG_RUNTIME_DIR: "", HOME: STATE_DIR },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs a CLI command as the owner, prints its time, and expects `expectCode`. */
async function cli(args: string[], expectCode = 0): Promise<CliResult> {
  const t = Date.now();
  const result = await asOwner(args);
  console.log(`e2e: banger ${args.join(" ")} -> ${result.code} in ${((Date.now() - t) / 1000).toFixed(1)} s`);
  expect(result.code, `${args.join(" ")}\n${result.stderr}\n--- dev up:\n${devErr.slice(-4000)}`).toBe(expectCode);
  return result;
}

const inNs = (command: string, ...args: string[]) =>
  execFileSync("ip", ["netns", "exec", ns.name, command, ...args], { encoding: "utf8" });
const vmmPattern = `qemu-system-x86_64.*${RUNTIME_DIR}/`;

/** What of this dev up is left: VMM processes, VM taps, NAT rules, loop devices, VM files. */
const leftovers = () => leftoversOf(ns, RUNTIME_DIR, STATE_DIR);

beforeAll(async () => {
  if (missing.length > 0) return;
  // A fresh owner: the defaults dev up picks, emptied of an earlier run.
  rmSync(RUNTIME_DIR, { recursive: true, force: true });
  rmSync(STATE_DIR, { recursive: true, force: true });
  ns = createNetNs();
  // No uplink: only lo, and the bridge and taps banger makes.
  expect(ns.links().map((l) => l.ifname)).toEqual(["lo"]);
  // The owner's config.toml in its home (the state directory): small VMs, and no VMM named: "auto" takes QEMU
  // here (no KVM, no Firecracker), TCG.
  mkdirSync(join(STATE_DIR, ".config", "banger"), { recursive: true, mode: 0o755 });
  writeFileSync(join(STATE_DIR, ".config", "banger", "config.toml"), TCG_GUEST_CONFIG.replace(/^vmm = .*\n/m, ""));
  execFileSync("chown", ["-R", `${OWNER}:${OWNER}`, STATE_DIR]);
  chmodSync(STATE_DIR, 0o700);

  // As plain root with --owner (sudo would give the owner as SUDO_UID), no directories named.
  dev = spawn("ip", ["netns", "exec", ns.name, BANGER, "dev", "up", "--owner", String(OWNER), "--json"], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, SUDO_UID: "", SUDO_GID: "", BANGER_SOCKET: "", BANGER_RUNTIME_DIR: "" },
  });
  dev.stderr?.on("data", (c: Buffer) => (devErr += c.toString()));
  dev.stdout?.resume();
  exited = new Promise((r) => dev.once("exit", (code) => r(code)));
  await waitUntil(() => devErr.includes("are up"), undefined, "dev up to start", 90_000);
}, 120_000);

afterAll(async () => {
  if (missing.length > 0) return;
  spawnSync("pkill", ["-9", "-f", vmmPattern]);
  if (dev.exitCode === null && dev.signalCode === null) {
    dev.kill("SIGINT");
    await exited;
  }
  ns.remove();
  rmSync(RUNTIME_DIR, { recursive: true, force: true });
  rmSync(STATE_DIR, { recursive: true, force: true });
  console.log(`e2e: dev up first-VM suite ${((Date.now() - started) / 1000).toFixed(1)} s`);
});

e2e("dev up, then the first VM offline, with embedded defaults (qemu-microvm, TCG)", () => {
  it("dev up says where it put things, in the owner's directories under root's", () => {
    expect(devErr).toContain(
      `banger dev: sockets in ${RUNTIME_DIR}, state in ${STATE_DIR}, logs in ${STATE_DIR}/logs ` +
        `(the helper as root, the others as uid ${OWNER})`,
    );
    // The owner's CLI needs no variable to find it.
    expect(devErr).toContain(`banger dev: try (as uid ${OWNER}, HOME=${STATE_DIR}): ./bin/banger vm run -- uname -a`);
    for (const dir of [RUNTIME_DIR, STATE_DIR]) {
      expect(statSync(dir)).toMatchObject({ uid: OWNER, gid: OWNER });
      expect(statSync(dir).mode & 0o777).toBe(0o700);
    }
    for (const parent of ["/run/banger-dev", "/var/lib/banger-dev"]) {
      expect(statSync(parent).uid).toBe(0);
      expect(statSync(parent).mode & 0o022).toBe(0);
    }
  });

  it("vm run -- uname -a: imports the host's kernel, stands in tiny for the unreachable default image, runs", async () => {
    expect(JSON.parse((await cli(["kernel", "list", "--json"])).stdout)).toEqual([]);
    expect(JSON.parse((await cli(["image", "list", "--json"])).stdout)).toEqual([]);

    const run = await cli(["vm", "run", "--name", "first", "--ssh-timeout", "300", "--", "uname", "-a"]);
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
    const modules = join(STATE_DIR, "kernels", `host-${version}`, "modules");
    expect(existsSync(join(modules, "modules.dep"))).toBe(true);
    // Only the modules banger's initramfs loads were copied, not the whole 400 MB tree.
    const copied = execFileSync("find", [modules, "-name", "*.ko*"], { encoding: "utf8" }).split("\n").filter(Boolean);
    expect(copied.length).toBeGreaterThan(0);
    expect(copied.length).toBeLessThan(30);
    expect(readdirSync(join(STATE_DIR, "kernels", `host-${version}`)).sort()).toEqual([
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
      vmm: string;
    }[];
    expect(shown[0]).toMatchObject({ image: "tiny", kernel: `host-${version}` });
    console.log(`e2e: vmm = "auto" chose ${shown[0]?.vmm}`);
    if (!existsSync("/usr/local/bin/firecracker")) expect(String(shown[0]?.vmm)).toMatch(/qemu/i);

    // The agent of the kit answers in tiny too, and the VM stops and goes.
    expect((await cli(["vm", "exec", "first", "--", "cat", "/etc/os-release"])).stdout).toContain("banger tiny");
    await cli(["vm", "delete", "first"]);
  }, 900_000);

  it("a create that names the default image itself is not stood in for: the registry's failure is the answer", async () => {
    const result = await cli(["vm", "create", "--name", "named", "--image", "debian"], 1);
    expect(result.stderr).toMatch(
      /banger: failed at resolve-image: registry host registry-1\.docker\.io is unreachable: .*\(op-[0-9a-f]{12}\)\n$/,
    );
    expect(JSON.parse((await cli(["vm", "list", "--json"])).stdout)).toEqual([]);
  }, 120_000);

  it("a VM kept running answers dig @<bridge> <vm>.vm on the sockets dev up bound as root", async () => {
    // No image named: tiny, already built.
    await cli(["vm", "create", "--name", "box", "--ssh-timeout", "300"]);
    const shown = JSON.parse((await cli(["vm", "show", "box", "--json"])).stdout) as {
      image: string;
      guestIp: string;
    }[];
    expect(shown[0]?.image).toBe("tiny");
    const guestIp = shown[0]?.guestIp ?? "";
    expect(guestIp).toMatch(/^172\.30\.0\.\d+$/);
    expect(inNs("dig", "+short", "+time=5", "+tries=3", `@${BRIDGE}`, "box.vm").trim()).toBe(guestIp);
    expect(inNs("dig", "+short", "+tcp", "+time=5", "+tries=3", `@${BRIDGE}`, "box.vm").trim()).toBe(guestIp);
    await cli(["vm", "delete", "box"]);
  }, 900_000);

  it("stopped with Ctrl-C, dev up leaves nothing behind", async () => {
    dev.kill("SIGINT");
    expect(await exited).toBe(0);
    expect(leftovers()).toEqual({ qemu: [], taps: [], nat: [], loops: [], vmFiles: [] });
    for (const socket of ["orchestrator.sock", "privileged.sock", "image-puller.sock"]) {
      expect(existsSync(join(RUNTIME_DIR, socket))).toBe(false);
    }
  }, 60_000);
});
