/**
 * `banger dev up` itself (not the harness) brings up banger in a throwaway network namespace, as plain
 * root with `--owner`, and a VM gets a `.vm` name: port 53 on the bridge's address (from the owner's
 * config.toml) is bound as root and passed to the orchestrator, which runs as the owner. The owner is a
 * uid without a passwd entry, so its config and SSH key live in the state directory, not in a real home.
 * No KVM or Firecracker here: the helper launches test-fixtures/fake-vmm.mjs (no guest boots).
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FAKE_VMM } from "./fake-vm-cluster.js";
import { BANGER, OWNER_CAN_READ_CHECKOUT, waitUntil, type CliResult } from "./harness.js";
import { IS_ROOT, createNetNs, type NetNs } from "./netns.js";

/** No passwd entry: `dev up` gives it the state directory as its home. */
const OWNER = 1234;
const BRIDGE_ADDRESS = "10.77.0.1";
const have = (tool: string) => spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0;
const missing = [
  !IS_ROOT && "root",
  !OWNER_CAN_READ_CHECKOUT && "a checkout other users can read",
  !have("dig") && "dig (bind9-dnsutils)",
  !have("python3") && "python3",
].filter((m): m is string => typeof m === "string");
if (missing.length > 0) console.warn(`SKIPPING dev up with a VM: this machine lacks ${missing.join(", ")}`);

let ns: NetNs;
let dir: string;
let runtimeDir: string;
let stateDir: string;
let dev: ReturnType<typeof spawn>;
let devErr = "";
let exited: Promise<number | null>;

/** The CLI as the owner (it is the only uid the helper answers). */
function cli(args: readonly string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(BANGER, args, {
      uid: OWNER,
      gid: OWNER,
      env: { ...process.env, BANGER_RUNTIME_DIR: runtimeDir, BANGER_SOCKET: "", HOME: stateDir },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

beforeAll(async () => {
  if (missing.length > 0) return;
  ns = createNetNs();
  dir = mkdtempSync(join(tmpdir(), "banger-devvm-"));
  chmodSync(dir, 0o755);
  runtimeDir = join(dir, "run");
  stateDir = join(dir, "state");
  // The owner's config (its home is the state directory): another bridge address than the default.
  const configDir = join(stateDir, ".config", "banger");
  mkdirSync(configDir, { recursive: true });
  writeFileSync(join(configDir, "config.toml"), `vmm = "firecracker"\n[network]\naddress = "${BRIDGE_ADDRESS}/24"\n`);
  // A kernel placeholder in a distribution layout and an image made from a tree, as the owner's files.
  const pkg = join(dir, "kernel-pkg");
  mkdirSync(join(pkg, "boot"), { recursive: true });
  writeFileSync(
    join(pkg, "boot", "vmlinux-6.1.0-27-amd64"),
    Buffer.concat([Buffer.from("\x7fELF"), Buffer.alloc(4096)]),
  );
  mkdirSync(join(dir, "tree", "etc"), { recursive: true });
  writeFileSync(join(dir, "tree", "etc", "os-release"), "ID=tiny\n");
  execFileSync("mkfs.ext4", [
    "-q",
    "-F",
    "-E",
    "root_owner=0:0",
    "-d",
    join(dir, "tree"),
    join(dir, "rootfs.img"),
    "64M",
  ]);
  execFileSync("chown", ["-R", `${OWNER}:${OWNER}`, stateDir, pkg, join(dir, "rootfs.img")]);
  chownSync(stateDir, OWNER, OWNER);

  dev = spawn(
    "ip",
    ["netns", "exec", ns.name, BANGER, "dev", "up", "--owner", String(OWNER), "--runtime-dir", runtimeDir].concat([
      "--state-dir",
      stateDir,
      "--firecracker",
      FAKE_VMM,
      "--json",
    ]),
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, SUDO_UID: "", SUDO_GID: "" } },
  );
  dev.stderr?.on("data", (c: Buffer) => (devErr += c.toString()));
  dev.stdout?.resume();
  exited = new Promise((r) => dev.once("exit", (code) => r(code)));
  await waitUntil(() => devErr.includes("are up"), undefined, "dev up to start");
  for (const args of [
    ["kernel", "import", "k61", pkg],
    ["image", "register", "tiny", "--rootfs", join(dir, "rootfs.img")],
  ]) {
    const result = await cli(args);
    if (result.code !== 0) throw new Error(`${args.join(" ")}: ${result.stderr}`);
  }
}, 120_000);

afterAll(async () => {
  if (missing.length > 0) return;
  await cli(["vm", "delete", "box"]).catch(() => undefined);
  dev.kill("SIGTERM");
  await exited;
  spawnSync("pkill", ["-f", `fake-vmm.mjs --api-sock ${runtimeDir}/`]);
  ns.remove();
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(missing.length > 0)("banger dev up --owner with a VM", () => {
  it("answers <vm>.vm on the bridge's address on port 53 that dev up bound as root for the orchestrator", async () => {
    const created = await cli(["vm", "create", "--name", "box", "--image", "tiny", "--no-ssh-wait"]);
    expect(created.code, `${created.stderr}\n${devErr}`).toBe(0);
    const shown = await cli(["vm", "show", "box", "--json"]);
    const { guestIp } = (JSON.parse(shown.stdout) as { guestIp: string }[])[0] ?? { guestIp: "" };
    expect(guestIp).toMatch(/^10\.77\.0\.\d+$/);

    // The orchestrator runs as the owner, on the sockets passed to it (it could not bind port 53 itself).
    const log = readFileSync(join(stateDir, "logs", "orchestrator.jsonl"), "utf8")
      .split("\n")
      .filter(Boolean)
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(log.find((l) => l["msg"] === "DNS responder for .vm listening")).toMatchObject({
      address: BRIDGE_ADDRESS,
      port: 53,
      passed: true,
    });
    const status = await cli(["daemon", "status", "--json"]);
    const services = (JSON.parse(status.stdout) as { services: { name: string; uid: number }[] }).services;
    expect(services.find((s) => s.name === "orchestrator")?.uid).toBe(OWNER);

    const dig = (...args: string[]) =>
      execFileSync("ip", ["netns", "exec", ns.name, "dig", "+short", "+time=2", "+tries=2", ...args], {
        encoding: "utf8",
      }).trim();
    expect(dig(`@${BRIDGE_ADDRESS}`, "box.vm")).toBe(guestIp);
    expect(dig("+tcp", `@${BRIDGE_ADDRESS}`, "box.vm")).toBe(guestIp);

    // doctor agrees: the responder answers, and the helper's owner is one that can run VMs.
    const doctor = await cli(["doctor", "--json"]);
    const checks = (JSON.parse(doctor.stdout) as { checks: { name: string; status: string; detail: string }[] }).checks;
    expect(checks.find((c) => c.name === "dns")).toMatchObject({
      status: "CHECK_STATUS_OK",
      detail: `answering <name>.vm on ${BRIDGE_ADDRESS}:53`,
    });
    expect(checks.find((c) => c.name === "helper-privileges")?.detail).not.toContain("owner is root");
  });
});
