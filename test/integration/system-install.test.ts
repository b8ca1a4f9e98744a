/**
 * `banger system install|uninstall` into a temporary root, the rendered units
 * through `systemd-analyze verify` and `security --offline` (the hardening
 * scores CI holds), the refusal where systemd is not PID 1, and socket
 * activation the way systemd passes a socket (`systemd-socket-activate`).
 *
 * Nothing here starts systemd units: this machine's PID 1 need not be
 * systemd, and a test must not install banger on the machine it runs on.
 * Needs root (owners and accounts under the root) and uid 1000 (the owner).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createUnixTransport } from "@banger/common";
import { PullerService } from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import { Code, createClient } from "@connectrpc/connect";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BANGER, MDWE_WRAPPER, OWNER_CAN_READ_CHECKOUT, ROOT, runCli, waitUntil } from "./harness.js";

const OWNER = 1000;
const IS_ROOT = process.getuid?.() === 0;
const OWNER_ENTRY = spawnSync("getent", ["passwd", String(OWNER)], { encoding: "utf8" }).stdout.split(":");
const OWNER_NAME = OWNER_ENTRY[0] ?? "";
const OWNER_HOME = OWNER_ENTRY[5] ?? "";
const HAVE_SYSTEMD_TOOLS =
  requireTools("banger system (units rendered and checked)", [
    "systemd-analyze",
    "systemd-sysusers",
    "systemctl",
    "systemd-socket-activate",
  ]).length === 0;
const SYSTEMD_IS_PID1 = existsSync("/run/systemd/system");

/** The hardening thresholds CI holds (systemd-analyze security's overall exposure, 0.0–10.0). */
const THRESHOLDS: Record<string, number> = {
  "bangerd.service": 1.0,
  // Issue 7's 2.5: root, host network, netlink, five capabilities, loop/dm/kvm/tun devices and the
  // owner's VMMs in /proc, in a RootDirectory of only the OS, the code and banger's directories.
  "banger-privileged.service": 2.5,
  "banger-image-puller.service": 1.5,
};

const UNITS = [
  "bangerd.socket",
  "bangerd-dns.socket",
  "bangerd.service",
  "banger-privileged.socket",
  "banger-privileged.service",
  "banger-image-puller.socket",
  "banger-image-puller.service",
];

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(dir);
  return dir;
}

function modeOf(path: string): string {
  return (statSync(path).mode & 0o7777).toString(8).padStart(4, "0");
}

function ownerOf(path: string): [number, number] {
  const s = statSync(path);
  return [s.uid, s.gid];
}

function idsFrom(file: string, name: string): [number, number] {
  const line = readFileSync(file, "utf8")
    .split("\n")
    .find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`${name} is not in ${file}`);
  const fields = line.split(":");
  return [Number(fields[2]), Number(fields[3] ?? fields[2])];
}

function liveGroup(name: string): string {
  return spawnSync("getent", ["group", name], { encoding: "utf8" }).stdout;
}

describe.skipIf(!IS_ROOT || !OWNER_NAME || !HAVE_SYSTEMD_TOOLS)(
  "banger system install --root (into a temporary root)",
  () => {
    let root: string;
    let installed: Awaited<ReturnType<typeof runCli>>;
    let bangerGroupBefore: string;

    beforeAll(async () => {
      root = join(tempDir("banger-sysroot-"), "root");
      bangerGroupBefore = liveGroup("banger");
      installed = await runCli(["system", "install", "--root", root, "--owner", OWNER_NAME]);
    });

    it("writes units, metadata, sysctl and sysusers files, accounts and the state layout, and touches nothing live", () => {
      expect(installed.stderr).toBe("");
      expect(installed.code).toBe(0);
      expect(installed.stdout).toContain(`nothing was started (--root)`);

      const [bangerGid] = idsFrom(join(root, "etc/group"), "banger");
      const [pullerUid, pullerGid] = idsFrom(join(root, "etc/passwd"), "banger-puller");
      const metadata = JSON.parse(readFileSync(join(root, "etc/banger/install.json"), "utf8")) as Record<
        string,
        unknown
      >;
      expect(metadata).toMatchObject({
        format: 1,
        owner: { user: OWNER_NAME, uid: OWNER, gid: OWNER, home: OWNER_HOME },
        accounts: { group: "banger", gid: bangerGid, pullerUser: "banger-puller", pullerUid, pullerGid },
        code: { dir: realpathSync(ROOT), node: realpathSync(process.execPath) },
        paths: {
          runtimeDir: "/run/banger",
          stateDir: "/var/lib/banger",
          cacheDir: "/var/cache/banger-image-puller",
          sockets: {
            orchestrator: "/run/banger/orchestrator.sock",
            privileged: "/run/banger/privileged.sock",
            imagePuller: "/run/banger/image-puller.sock",
          },
        },
        units: expect.arrayContaining(UNITS) as unknown,
      });
      expect(modeOf(join(root, "etc/banger/install.json"))).toBe("0644");

      for (const unit of UNITS) {
        expect(modeOf(join(root, "etc/systemd/system", unit)), unit).toBe("0644");
        expect(ownerOf(join(root, "etc/systemd/system", unit))).toEqual([0, 0]);
      }
      // Enabled inside the root: the three sockets and bangerd.
      for (const link of [
        "sockets.target.wants/bangerd.socket",
        "sockets.target.wants/banger-privileged.socket",
        "sockets.target.wants/banger-image-puller.socket",
        "multi-user.target.wants/bangerd.service",
      ]) {
        expect(lstatSync(join(root, "etc/systemd/system", link)).isSymbolicLink(), link).toBe(true);
      }
      expect(readFileSync(join(root, "etc/sysctl.d/60-banger.conf"), "utf8")).toMatch(/^net\.ipv4\.ip_forward = 1$/m);
      expect(readFileSync(join(root, "etc/sysusers.d/banger.conf"), "utf8")).toMatch(/^u banger-puller /m);

      const layout: [string, [number, number], string][] = [
        ["var/lib/banger", [OWNER, bangerGid], "0750"],
        ["var/lib/banger/images", [OWNER, bangerGid], "0750"],
        ["var/lib/banger/images/.staging", [OWNER, pullerGid], "2770"],
        ["var/cache/banger-image-puller", [pullerUid, pullerGid], "0700"],
        ["var/cache/banger-image-puller/built", [pullerUid, pullerGid], "0700"],
        [join(OWNER_HOME.slice(1), ".config/banger"), [OWNER, OWNER], "0700"],
      ];
      for (const [path, owner, mode] of layout) {
        expect([ownerOf(join(root, path)), modeOf(join(root, path))], path).toEqual([owner, mode]);
      }

      // The running system is untouched: no group on the live machine, no live unit or metadata.
      expect(liveGroup("banger")).toBe(bangerGroupBefore);
      if (!SYSTEMD_IS_PID1) {
        expect(existsSync("/etc/banger/install.json")).toBe(false);
        expect(existsSync("/etc/systemd/system/bangerd.service")).toBe(false);
      }
    });

    it("renders units for this owner and this checkout: the helper jitless with W^X memory and five capabilities", () => {
      const unit = (name: string) => readFileSync(join(root, "etc/systemd/system", name), "utf8");
      const code = realpathSync(ROOT);
      const node = realpathSync(process.execPath);
      expect(unit("bangerd.service")).toContain(
        `ExecStart=${node} --expose-gc ${code}/services/orchestrator/dist/bundle/main.js `,
      );
      expect(unit("bangerd.service")).toMatch(new RegExp(`^User=${OWNER_NAME}$`, "m"));
      expect(unit("bangerd.service")).toContain(`BindPaths=${OWNER_HOME}/.config/banger`);
      const helper = unit("banger-privileged.service");
      expect(helper).toContain(
        `ExecStart=${node} --jitless --expose-gc ${code}/services/privileged/dist/bundle/main.js `,
      );
      expect(helper).toContain(`--owner-uid ${OWNER} --owner-gid ${OWNER}`);
      expect(helper).toMatch(/^MemoryDenyWriteExecute=yes$/m);
      expect(helper).toMatch(/^CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN CAP_CHOWN CAP_SETUID CAP_SETGID$/m);
      expect(helper).toMatch(/^KillMode=process$/m);
      expect(unit("banger-privileged.socket")).toMatch(/^SocketUser=root\nSocketGroup=banger\nSocketMode=0660$/m);
      expect(unit("banger-image-puller.service")).toMatch(/^User=banger-puller$/m);
      expect(unit("banger-image-puller.socket")).toMatch(new RegExp(`^SocketUser=${OWNER_NAME}$`, "m"));
      for (const name of UNITS) expect(unit(name), name).not.toMatch(/@[A-Z_]+@/);
      for (const name of Object.keys(THRESHOLDS)) {
        // @system-service alone kills Node (V8 calls pkey_alloc).
        expect(unit(name), name).toMatch(/^SystemCallFilter=@system-service @pkey$/m);
      }
    });

    it("renders units that systemd-analyze verify accepts without a single warning", () => {
      const unitDir = join(root, "etc/systemd/system");
      const verify = spawnSync("systemd-analyze", ["verify", ...UNITS.map((u) => join(unitDir, u))], {
        encoding: "utf8",
      });
      // verify exits 0 on unknown keys and unparsable values ("…, ignoring"): its output must be empty too.
      expect(verify.stderr + verify.stdout).toBe("");
      expect(verify.status).toBe(0);
    });

    it("scores each service within its threshold with systemd-analyze security --offline", () => {
      const scores: Record<string, number> = {};
      for (const [unit, threshold] of Object.entries(THRESHOLDS)) {
        const file = join(root, "etc/systemd/system", unit);
        // --threshold is the exposure times ten; above it the command fails.
        const result = spawnSync(
          "systemd-analyze",
          ["security", "--offline=yes", `--threshold=${Math.round(threshold * 10)}`, "--no-pager", file],
          { encoding: "utf8" },
        );
        const score = /Overall exposure level for \S+: (\d+\.\d+)/.exec(result.stdout)?.[1];
        expect(score, `${unit}: ${result.stdout}${result.stderr}`).toBeDefined();
        scores[unit] = Number(score);
        expect(Number(score), unit).toBeLessThanOrEqual(threshold);
        expect(result.status, unit).toBe(0);
      }
      console.log(`hardening scores: ${JSON.stringify(scores)}`);
    });

    it("upgrades in place, keeping the state, and refuses another owner", async () => {
      writeFileSync(join(root, "var/lib/banger/images/kept"), "an image");
      const again = await runCli(["system", "install", "--root", root, "--owner", OWNER_NAME]);
      expect(again.code, again.stderr).toBe(0);
      expect(again.stdout).toContain("upgrading banger");
      expect(readFileSync(join(root, "var/lib/banger/images/kept"), "utf8")).toBe("an image");

      const other = await runCli(["system", "install", "--root", root, "--owner", "nobody"]);
      expect(other.code).toBe(1);
      expect(other.stderr).toMatch(
        new RegExp(
          `banger is installed for ${OWNER_NAME} \\(uid ${OWNER}\\); uninstall it first .*nothing was changed`,
        ),
      );
      expect(JSON.parse(readFileSync(join(root, "etc/banger/install.json"), "utf8"))).toMatchObject({
        owner: { uid: OWNER },
      });
    });

    it("binds .vm DNS where the owner's bridge will be: network.address, else the default, else --dns-address", async () => {
      const socketUnit = () => readFileSync(join(root, "etc/systemd/system/bangerd-dns.socket"), "utf8");
      expect(socketUnit()).toMatch(/^ListenDatagram=172\.30\.0\.1:53$/m); // no config yet: bangerd's default
      const config = join(root, OWNER_HOME, ".config", "banger", "config.toml");
      writeFileSync(config, '[network]\naddress = "10.99.0.1/24"\n');
      const fromConfig = await runCli(["system", "install", "--root", root, "--owner", OWNER_NAME]);
      expect(fromConfig.code, fromConfig.stderr).toBe(0);
      expect(fromConfig.stdout).toContain(`.vm DNS: port 53 on 10.99.0.1 (network.address in ${OWNER_HOME}/.config`);
      expect(socketUnit()).toMatch(/^ListenStream=10\.99\.0\.1:53$/m);
      const given = await runCli([
        "system",
        "install",
        "--root",
        root,
        "--owner",
        OWNER_NAME,
        "--dns-address",
        "10.5.0.1",
      ]);
      expect(given.code, given.stderr).toBe(0);
      expect(socketUnit()).toMatch(/^ListenDatagram=10\.5\.0\.1:53$/m);
      writeFileSync(config, "[network\n");
      const broken = await runCli(["system", "install", "--root", root, "--owner", OWNER_NAME]);
      expect(broken.code).toBe(1);
      expect(broken.stderr).toMatch(/config\.toml is not valid TOML .*pass --dns-address/);
      expect(socketUnit()).toMatch(/^ListenDatagram=10\.5\.0\.1:53$/m); // refused: nothing rewritten
      rmSync(config);
    });

    it("uninstall --root removes units, links and metadata and keeps the state; --purge removes the state", async () => {
      const removed = await runCli(["system", "uninstall", "--root", root]);
      expect(removed.code, removed.stderr).toBe(0);
      const unitDir = join(root, "etc/systemd/system");
      expect(readdirSync(unitDir, { recursive: true }).filter((f) => String(f).includes("banger"))).toEqual([]);
      for (const file of ["etc/banger", "etc/sysctl.d/60-banger.conf", "etc/sysusers.d/banger.conf"]) {
        expect(existsSync(join(root, file)), file).toBe(false);
      }
      expect(readFileSync(join(root, "var/lib/banger/images/kept"), "utf8")).toBe("an image");
      expect(existsSync(join(root, "var/cache/banger-image-puller"))).toBe(true);
      expect(removed.stdout).toContain("kept /var/lib/banger /var/cache/banger-image-puller");

      const twice = await runCli(["system", "uninstall", "--root", root]);
      expect(twice.code).toBe(0);
      expect(twice.stdout).toContain("not installed");

      expect((await runCli(["system", "install", "--root", root, "--owner", OWNER_NAME])).code).toBe(0);
      const purged = await runCli(["system", "uninstall", "--root", root, "--purge"]);
      expect(purged.code, purged.stderr).toBe(0);
      expect(existsSync(join(root, "var/lib/banger"))).toBe(false);
      expect(existsSync(join(root, "var/cache/banger-image-puller"))).toBe(false);
      expect(existsSync(join(root, "etc/systemd/system/bangerd.service"))).toBe(false);
      // The owner's own directory stays theirs.
      expect(existsSync(join(root, OWNER_HOME.slice(1), ".config/banger"))).toBe(true);
    });
  },
);

describe.skipIf(!IS_ROOT || !OWNER_NAME || SYSTEMD_IS_PID1)("banger system where systemd is not PID 1", () => {
  it("install, status, restart and uninstall say so, exit 1 and change nothing", async () => {
    const before = liveGroup("banger");
    const pid1 = readFileSync("/proc/1/comm", "utf8").trim();
    for (const args of [
      ["system", "install", "--owner", OWNER_NAME],
      ["system", "status"],
      ["system", "restart"],
      ["system", "uninstall"],
    ]) {
      const result = await runCli(args);
      expect(result.code, args.join(" ")).toBe(1);
      expect(result.stderr, args.join(" ")).toContain(
        `banger: systemd is not PID 1 on this machine (PID 1 is ${pid1}), so banger cannot run as system services here; nothing was changed.`,
      );
    }
    expect(liveGroup("banger")).toBe(before);
    for (const path of [
      "/etc/banger/install.json",
      "/etc/systemd/system/bangerd.service",
      "/etc/sysusers.d/banger.conf",
      "/etc/sysctl.d/60-banger.conf",
    ]) {
      expect(existsSync(path), path).toBe(false);
    }
  });
});

describe.skipIf(!IS_ROOT || !OWNER_CAN_READ_CHECKOUT)("banger system as a user who is not root", () => {
  it("refuses install and uninstall, even into a directory, with exit code 1", () => {
    const dir = tempDir("banger-sysroot-user-");
    chmodSync(dir, 0o777);
    for (const args of [
      ["system", "install", "--root", join(dir, "root"), "--owner", OWNER_NAME],
      ["system", "uninstall", "--root", join(dir, "root")],
    ]) {
      const result = spawnSync(BANGER, args, { uid: OWNER, gid: OWNER, encoding: "utf8" });
      expect(result.status, args.join(" ")).toBe(1);
      expect(result.stderr).toContain(`must run as root (sudo banger system ${args[1]}); nothing was changed`);
    }
    expect(existsSync(join(dir, "root"))).toBe(false);
  });
});

// ---------------------------------------------------------------- socket activation

/** A service started the way systemd starts a socket unit's service: the socket made first, passed as fd 3. */
interface Activated {
  readonly child: ChildProcess;
  readonly logs: Record<string, unknown>[];
  readonly exited: Promise<void>;
}

function activate(socket: string, argv: readonly string[], env: NodeJS.ProcessEnv = {}): Activated {
  const child = spawn("systemd-socket-activate", ["--listen", socket, ...argv], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...env },
  });
  const logs: Record<string, unknown>[] = [];
  let buffered = "";
  child.stdout?.on("data", (chunk: Buffer) => {
    buffered += chunk.toString();
    const lines = buffered.split("\n");
    buffered = lines.pop() ?? "";
    for (const line of lines) if (line.startsWith("{")) logs.push(JSON.parse(line) as Record<string, unknown>);
  });
  const exited = new Promise<void>((r) => child.once("close", () => r()));
  return { child, logs, exited };
}

function callHelperAs(uid: number, socket: string): { ok: boolean; uid: number; code?: number } {
  const result = spawnSync(process.execPath, [join(import.meta.dirname, "fixtures/get-version.mjs"), socket], {
    uid,
    gid: uid,
    encoding: "utf8",
  });
  if (result.status !== 0) throw new Error(`caller failed: ${result.stderr}`);
  return JSON.parse(result.stdout) as { ok: boolean; uid: number; code?: number };
}

describe.skipIf(!IS_ROOT || !HAVE_SYSTEMD_TOOLS || !OWNER_CAN_READ_CHECKOUT)("socket activation", () => {
  it("the helper, run as its unit runs it (--jitless, no W+X memory), serves the passed socket and answers only the owner", async () => {
    if (!MDWE_WRAPPER)
      console.warn("python3 or PR_SET_MDWE missing: the helper runs --jitless without W^X enforcement");
    const dir = tempDir("banger-activate-");
    chmodSync(dir, 0o755);
    mkdirSync(join(dir, "state"));
    const socket = join(dir, "privileged.sock");
    const helper = activate(socket, [
      ...(MDWE_WRAPPER ?? []),
      process.execPath,
      "--jitless",
      join(ROOT, "services/privileged/dist/bundle/main.js"),
      ...["--runtime-dir", dir, "--state-dir", join(dir, "state")],
      ...["--owner-uid", String(OWNER), "--owner-gid", String(OWNER)],
    ]);
    try {
      await waitUntil(() => existsSync(socket), undefined, "the activator's socket");
      // Stands in for SocketMode: anyone may connect, so the uid check alone decides.
      chmodSync(socket, 0o666);
      expect(callHelperAs(OWNER, socket)).toEqual({ ok: true, uid: OWNER, ownerUid: OWNER });
      expect(callHelperAs(0, socket)).toEqual({ ok: false, uid: 0, code: Code.PermissionDenied });
      expect(callHelperAs(4242, socket)).toEqual({ ok: false, uid: 4242, code: Code.PermissionDenied });
      // (spawnSync held the event loop: the helper's log lines arrive now.)
      await waitUntil(() => helper.logs.filter((l) => l["reason"] === "NOT_OWNER").length >= 2, undefined, "log lines");
      expect(helper.logs.find((l) => l["msg"] === "listening")).toMatchObject({
        socket,
        activation: "systemd",
      });
      expect(helper.logs.filter((l) => l["reason"] === "NOT_OWNER")).toHaveLength(2);
    } finally {
      helper.child.kill("SIGTERM");
      await helper.exited;
    }
    // The socket is systemd's: the helper leaves it for the next start.
    expect(lstatSync(socket).isSocket()).toBe(true);
    expect(helper.logs.at(-1)).toMatchObject({ msg: "stopped" });
  });

  it("the orchestrator and the puller serve the sockets they are passed too", async () => {
    const dir = tempDir("banger-activate-");
    chmodSync(dir, 0o755);
    const env = { XDG_CONFIG_HOME: join(dir, "config"), HOME: dir };
    const orchestratorSocket = join(dir, "orchestrator.sock");
    const pullerSocket = join(dir, "image-puller.sock");
    const common = ["--runtime-dir", dir, "--state-dir", join(dir, "state")];
    const orchestrator = activate(
      orchestratorSocket,
      [process.execPath, join(ROOT, "services/orchestrator/dist/bundle/main.js"), ...common],
      env,
    );
    const puller = activate(
      pullerSocket,
      [process.execPath, join(ROOT, "services/image-puller/dist/bundle/main.js"), ...common],
      env,
    );
    try {
      await waitUntil(() => existsSync(orchestratorSocket) && existsSync(pullerSocket), undefined, "the sockets");
      const status = await runCli(["daemon", "status", "--json"], { BANGER_SOCKET: orchestratorSocket });
      const services = (JSON.parse(status.stdout) as { services: { name: string; reachable: boolean }[] }).services;
      // bangerd answers on its passed socket and reaches the puller through its passed socket
      // (the helper is not running here).
      expect(services.map((s) => [s.name, s.reachable])).toEqual([
        ["orchestrator", true],
        ["privileged", false],
        ["image-puller", true],
      ]);
      const { transport, close } = createUnixTransport(pullerSocket, { peer: "image-puller" });
      try {
        expect((await createClient(PullerService, transport).getVersion({})).pid).toBeGreaterThan(0);
      } finally {
        close();
      }
      for (const svc of [orchestrator, puller]) {
        expect(svc.logs.find((l) => l["msg"] === "listening")).toMatchObject({ activation: "systemd" });
      }
    } finally {
      for (const svc of [orchestrator, puller]) svc.child.kill("SIGTERM");
      await Promise.all([orchestrator.exited, puller.exited]);
    }
    expect(lstatSync(orchestratorSocket).isSocket()).toBe(true);
    expect(lstatSync(pullerSocket).isSocket()).toBe(true);
  });
});
