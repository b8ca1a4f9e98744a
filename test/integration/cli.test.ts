/** The CLI as a user runs it: help, exit codes, and `banger dev up`. */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  HAVE_REGISTRY_TOOLS,
  makeImage,
  makeLayer,
  skopeoCopy,
  writeOciLayout,
} from "../../services/image-puller/test-support/registry/oci-image.js";
import { startRegistry } from "../../services/image-puller/test-support/registry/registry-process.js";
import { BANGER, runCli, socketAnswers, waitUntil, OWNER_CAN_READ_CHECKOUT } from "./harness.js";

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe("banger CLI", () => {
  it("prints help for every command and exits 0", async () => {
    for (const args of [["--help"], ["daemon", "--help"], ["daemon", "status", "--help"], ["dev", "up", "--help"]]) {
      const result = await runCli(args);
      expect(result.code, args.join(" ")).toBe(0);
      expect(result.stdout).toContain("Usage: banger");
    }
    expect((await runCli(["daemon", "status", "--help"])).stdout).toContain("--json");
    const devUpHelp = (await runCli(["dev", "up", "--help"])).stdout.replace(/\s+/g, " ");
    expect(devUpHelp).toContain("--owner <user>");
    expect(devUpHelp).toContain("plain root with neither is refused");
    expect(devUpHelp).toContain("by default, as root, /run/banger-dev/<owner uid> and /var/lib/banger-dev/<owner uid>");
    expect(devUpHelp).toContain("The CLI run by the owner finds these sockets with no variable set");
  });

  it("exits 2 on a usage error", async () => {
    const unknown = await runCli(["daemon", "status", "--no-such-flag"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("unknown option '--no-such-flag'");
    expect((await runCli(["frobnicate"])).code).toBe(2);
    expect((await runCli(["dev", "up", "--owner"])).code).toBe(2);
  });

  it("prints `banger: <message> (op-…)` and exits 1 when the orchestrator is not there", async () => {
    const dir = mkdtempSync(join(tmpdir(), "banger-cli-"));
    dirs.push(dir);
    const result = await runCli(["daemon", "status"], { BANGER_RUNTIME_DIR: dir });
    expect(result.code).toBe(1);
    expect(result.stdout).toContain(
      `orchestrator (bangerd) is unavailable at ${join(dir, "orchestrator.sock")}: no socket there`,
    );
    expect(result.stdout).toMatch(/op id: op-[0-9a-f]{12}/);
  });
});

/** uid 1000's name, from the passwd database. */
const OWNER_NAME = spawnSync("getent", ["passwd", "1000"], { encoding: "utf8" }).stdout.split(":")[0] ?? "";

describe.skipIf(process.getuid?.() !== 0)("banger dev up as plain root", () => {
  const plainRoot = { ...process.env, SUDO_UID: "", SUDO_GID: "", SUDO_USER: "" };

  it("refuses to start without an owner (no sudo, no --owner), saying how, and makes nothing", async () => {
    const dir = mkdtempSync(join(tmpdir(), "banger-dev-"));
    dirs.push(dir);
    const runtimeDir = join(dir, "run");
    const stateDir = join(dir, "state");
    const result = await runCli(["dev", "up", "--runtime-dir", runtimeDir, "--state-dir", stateDir], plainRoot);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(
      "banger: dev up runs as root without an owner, and VMs never run as root: pass --owner USER",
    );
    expect(result.stderr).toContain(
      "or run it with sudo from your user (sudo ./bin/banger dev up …); nothing was started",
    );
    // Nothing was made, so nothing was started.
    expect(existsSync(runtimeDir)).toBe(false);
    expect(existsSync(stateDir)).toBe(false);
  });

  it("refuses root as the owner, and a user that does not exist", async () => {
    const dir = mkdtempSync(join(tmpdir(), "banger-dev-"));
    dirs.push(dir);
    const args = ["dev", "up", "--runtime-dir", join(dir, "run"), "--state-dir", join(dir, "state")];
    for (const owner of ["root", "0"]) {
      const result = await runCli([...args, "--owner", owner], plainRoot);
      expect(result.code, owner).toBe(2);
      expect(result.stderr).toContain(`--owner ${owner} is root: VMs never run as root`);
    }
    const nobody = await runCli([...args, "--owner", "no-such-user-here"], plainRoot);
    expect(nobody.code).toBe(2);
    expect(nobody.stderr).toContain("--owner no-such-user-here: no such user in /etc/passwd");
    expect(existsSync(join(dir, "run"))).toBe(false);
  });
});

describe.skipIf(!OWNER_CAN_READ_CHECKOUT || OWNER_NAME === "")("banger dev up --owner", () => {
  it("runs the orchestrator and the puller as the owner (by name), writes their logs, refuses a second instance, and stops all on SIGTERM", async () => {
    const dir = mkdtempSync(join(tmpdir(), "banger-dev-"));
    dirs.push(dir);
    chmodSync(dir, 0o755);
    const runtimeDir = join(dir, "run");
    const stateDir = join(dir, "state");
    // Plain root: no sudo in the environment, the owner named on the command line.
    const dev = spawn(
      BANGER,
      ["dev", "up", "--runtime-dir", runtimeDir, "--state-dir", stateDir, "--owner", OWNER_NAME],
      { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, SUDO_UID: "", SUDO_GID: "" } },
    );
    let stderr = "";
    dev.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    dev.stdout.resume();
    const exited = new Promise<number | null>((r) => dev.once("exit", (code) => r(code)));
    await waitUntil(() => stderr.includes("are up"), undefined, "dev up to start");

    const status = await runCli(["daemon", "status", "--json"], { BANGER_RUNTIME_DIR: runtimeDir });
    expect(status.code, status.stderr).toBe(0);
    const { opId, services } = JSON.parse(status.stdout) as {
      opId: string;
      services: { name: string; uid: number; reachable: boolean }[];
    };
    expect(services.map((s) => [s.name, s.reachable, s.uid])).toEqual([
      ["orchestrator", true, 1000],
      ["privileged", true, 0],
      ["image-puller", true, 1000],
    ]);
    expect(statSync(runtimeDir).uid).toBe(1000);
    expect(statSync(stateDir).uid).toBe(1000);

    // Each service logs to <state-dir>/logs/<service>.jsonl under its own service name.
    for (const service of ["orchestrator", "privileged", "image-puller"]) {
      const file = join(stateDir, "logs", `${service}.jsonl`);
      await waitUntil(() => existsSync(file) && readFileSync(file, "utf8").includes(opId), undefined, `${service} log`);
      const lines = readFileSync(file, "utf8")
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines.every((l) => l["service"] === service)).toBe(true);
      expect(lines.some((l) => l["op_id"] === opId && String(l["msg"]).endsWith("rpc completed"))).toBe(true);
    }

    const second = await runCli(["dev", "up", "--runtime-dir", runtimeDir, "--state-dir", stateDir, "--owner", "1000"]);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(`banger is already running in ${runtimeDir}`);

    dev.kill("SIGTERM");
    expect(await exited).toBe(0);
    for (const socket of ["orchestrator.sock", "privileged.sock", "image-puller.sock"]) {
      expect(await socketAnswers(join(runtimeDir, socket))).toBe(false);
      expect(existsSync(join(runtimeDir, socket))).toBe(false);
    }
  });
});

describe.skipIf(!OWNER_CAN_READ_CHECKOUT)("sudo banger dev up", () => {
  it("runs the orchestrator and the puller as the user behind sudo and the helper as root, all reachable by that user", async () => {
    const dir = mkdtempSync(join(tmpdir(), "banger-sudo-"));
    dirs.push(dir);
    chmodSync(dir, 0o755);
    const runtimeDir = join(dir, "run");
    const dev = spawn(BANGER, ["dev", "up", "--runtime-dir", runtimeDir, "--state-dir", join(dir, "state")], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, SUDO_UID: "1000", SUDO_GID: "1000" },
    });
    let stderr = "";
    dev.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    dev.stdout.resume();
    const exited = new Promise<number | null>((r) => dev.once("exit", (code) => r(code)));
    await waitUntil(() => stderr.includes("are up"), undefined, "dev up to start");

    // The CLI as the user, not root.
    const result = spawnSync(BANGER, ["daemon", "status", "--json"], {
      uid: 1000,
      gid: 1000,
      env: { ...process.env, BANGER_RUNTIME_DIR: runtimeDir, BANGER_SOCKET: "" },
      encoding: "utf8",
    });
    // An image pulled and built by the unprivileged puller (uid 1000) keeps the owners the image declares.
    let pulled: { status: number | null; stderr: string } | undefined;
    let rootfs = "";
    if (HAVE_REGISTRY_TOOLS) {
      const registry = await startRegistry(join(dir, "registry"));
      try {
        const layout = join(dir, "layout");
        writeOciLayout(layout, { v1: makeImage("amd64", [makeLayer({ "etc/hostname": "tiny\n" })]) });
        await skopeoCopy(layout, "v1", `${registry.host}/tiny/os:v1`);
        pulled = await runAs1000(["image", "pull", `${registry.host}/tiny/os:v1`, "--name", "tiny"], runtimeDir);
        rootfs = join(dir, "state", "images", "tiny", "rootfs.ext4");
      } finally {
        await registry.stop();
      }
    }
    dev.kill("SIGTERM");
    expect(await exited).toBe(0);
    expect(result.status, result.stderr).toBe(0);
    if (pulled) {
      expect(pulled.status, pulled.stderr).toBe(0);
      const stat = execFileSync("debugfs", ["-R", "stat /etc/hostname", rootfs], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"],
      });
      expect(stat).toMatch(/User:\s+0\s+Group:\s+0/); // root-owned inside, though built by uid 1000
      expect(statSync(rootfs).uid).toBe(1000);
    }
    const status = JSON.parse(result.stdout) as {
      services: { name: string; uid: number; reachable: boolean; privilegesOk: boolean }[];
    };
    expect(status.services.map((s) => [s.name, s.reachable, s.uid, s.privilegesOk])).toEqual([
      ["orchestrator", true, 1000, true],
      ["privileged", true, 0, true],
      ["image-puller", true, 1000, true],
    ]);
  });
});

/** A uid without a passwd entry of this test's own, so no other test's dev up shares its default directories. */
const NO_FLAGS_UID = 1236;
const noFlagsUidCanRead =
  OWNER_CAN_READ_CHECKOUT &&
  spawnSync(
    "setpriv",
    ["--reuid", String(NO_FLAGS_UID), "--regid", String(NO_FLAGS_UID), "--clear-groups"].concat(["test", "-r", BANGER]),
  ).status === 0;

describe.skipIf(!noFlagsUidCanRead || existsSync("/run/banger/orchestrator.sock"))(
  "sudo banger dev up with no flags",
  () => {
    const runtimeDir = `/run/banger-dev/${NO_FLAGS_UID}`;
    const stateDir = `/var/lib/banger-dev/${NO_FLAGS_UID}`;
    afterAll(() => {
      for (const d of [runtimeDir, stateDir]) rmSync(d, { recursive: true, force: true });
    });

    it("puts its sockets and state in the user's directories under root's, says where, and the user's CLI finds it unasked", async () => {
      for (const d of [runtimeDir, stateDir]) rmSync(d, { recursive: true, force: true });
      const dev = spawn(BANGER, ["dev", "up"], {
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, SUDO_UID: String(NO_FLAGS_UID), SUDO_GID: String(NO_FLAGS_UID) },
      });
      let stderr = "";
      dev.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
      dev.stdout.resume();
      const exited = new Promise<number | null>((r) => dev.once("exit", (code) => r(code)));
      await waitUntil(() => stderr.includes("are up"), undefined, "dev up to start", 60_000);
      expect(stderr).toContain(
        `banger dev: sockets in ${runtimeDir}, state in ${stateDir}, logs in ${stateDir}/logs ` +
          `(the helper as root, the others as uid ${NO_FLAGS_UID})`,
      );
      expect(stderr).toContain(`try (as uid ${NO_FLAGS_UID}, HOME=${stateDir}): ./bin/banger vm run -- uname -a`);

      // The CLI as the user, with nothing telling it where dev up runs.
      const status = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(BANGER, ["daemon", "status", "--json"], {
          uid: NO_FLAGS_UID,
          gid: NO_FLAGS_UID,
          env: { ...process.env, BANGER_SOCKET: "", BANGER_RUNTIME_DIR: "", XDG_RUNTIME_DIR: "" },
        });
        let out = "";
        let err = "";
        child.stdout.on("data", (c: Buffer) => (out += c.toString()));
        child.stderr.on("data", (c: Buffer) => (err += c.toString()));
        child.once("close", (code) => resolve({ code, stdout: out, stderr: err }));
      });
      dev.kill("SIGTERM");
      expect(await exited).toBe(0);
      expect(status.code, status.stderr + status.stdout).toBe(0);
      const services = (JSON.parse(status.stdout) as { services: { name: string; uid: number; reachable: boolean }[] })
        .services;
      expect(services.map((s) => [s.name, s.reachable, s.uid])).toEqual([
        ["orchestrator", true, NO_FLAGS_UID],
        ["privileged", true, 0],
        ["image-puller", true, NO_FLAGS_UID],
      ]);
      // The user's directories (0700), in root's parents that no one else may write.
      for (const d of [runtimeDir, stateDir]) {
        expect(statSync(d).uid, d).toBe(NO_FLAGS_UID);
        expect(statSync(d).mode & 0o777, d).toBe(0o700);
      }
      for (const parent of ["/run/banger-dev", "/var/lib/banger-dev"]) {
        expect(statSync(parent).uid, parent).toBe(0);
        expect(statSync(parent).mode & 0o777, parent).toBe(0o755);
      }
    });
  },
);

describe.skipIf(!OWNER_CAN_READ_CHECKOUT)("sudo banger dev up in directories the user planted", () => {
  // Root works in the user's directories: a name the user points elsewhere must not make root
  // append to, or chown, what it points at.
  const shownState = (path: string) => {
    const st = lstatSync(path);
    return `${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid} ${st.isFile() ? readFileSync(path, "utf8") : ""}`;
  };
  const sudoDevUp = (runtimeDir: string, stateDir: string) =>
    spawnSync(BANGER, ["dev", "up", "--runtime-dir", runtimeDir, "--state-dir", stateDir], {
      env: { ...process.env, SUDO_UID: "1000", SUDO_GID: "1000" },
      encoding: "utf8",
      timeout: 30_000,
    });

  it("refuses a log file that is a symlink (to a root-owned 0600 file) and starts nothing", () => {
    const dir = mkdtempSync(join(tmpdir(), "banger-sudo-log-"));
    dirs.push(dir);
    chmodSync(dir, 0o755);
    const victim = join(dir, "victim");
    writeFileSync(victim, "root only\n", { mode: 0o600 });
    const before = shownState(victim);
    const logs = join(dir, "state", "logs");
    mkdirSync(logs, { recursive: true, mode: 0o700 });
    for (const path of [join(dir, "state"), logs]) chownSync(path, 1000, 1000);
    for (const service of ["privileged", "orchestrator"]) {
      rmSync(join(logs, "privileged.jsonl"), { force: true });
      rmSync(join(logs, "orchestrator.jsonl"), { force: true });
      symlinkSync(victim, join(logs, `${service}.jsonl`));
      const result = sudoDevUp(join(dir, "run"), join(dir, "state"));
      expect(shownState(victim)).toBe(before);
      expect(result.status, result.stderr).toBe(1);
      expect(result.stderr).toContain(`log file ${join(logs, `${service}.jsonl`)} is a symlink or not a regular file`);
      expect(existsSync(join(dir, "run", "privileged.sock"))).toBe(false); // nothing was started
    }
  });

  it("refuses a runtime directory that is a symlink (to a root-owned directory) and chowns nothing", () => {
    const dir = mkdtempSync(join(tmpdir(), "banger-sudo-run-"));
    dirs.push(dir);
    chmodSync(dir, 0o755);
    const victim = join(dir, "root-only");
    mkdirSync(victim, { mode: 0o700 });
    const before = shownState(victim);
    symlinkSync(victim, join(dir, "run"));
    const result = sudoDevUp(join(dir, "run"), join(dir, "state"));
    expect(shownState(victim)).toBe(before);
    expect(result.status, result.stderr).toBe(1);
    expect(result.stderr).toContain(`${join(dir, "run")} is a symlink or not a directory`);
  });

  it("refuses a directory that belongs to someone else than the user behind sudo", () => {
    const dir = mkdtempSync(join(tmpdir(), "banger-sudo-other-"));
    dirs.push(dir);
    chmodSync(dir, 0o755);
    mkdirSync(join(dir, "run"), { mode: 0o700 });
    chownSync(join(dir, "run"), 4242, 4242);
    const result = sudoDevUp(join(dir, "run"), join(dir, "state"));
    expect(result.status, result.stderr).toBe(1);
    expect(result.stderr).toContain(`${join(dir, "run")} belongs to uid 4242, not to uid 1000`);
    expect(statSync(join(dir, "run")).uid).toBe(4242);
  });
});

/** Runs the CLI as uid 1000 without blocking this process (the services it talks to may log through it). */
function runAs1000(args: readonly string[], runtimeDir: string): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(BANGER, args, {
      uid: 1000,
      gid: 1000,
      env: { ...process.env, BANGER_RUNTIME_DIR: runtimeDir, BANGER_SOCKET: "" },
    });
    let stderr = "";
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.stdout.resume();
    child.once("close", (status) => resolve({ status, stderr }));
  });
}
