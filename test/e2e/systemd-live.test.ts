/**
 * `banger system install|status|restart|uninstall` against a live systemd:
 * this host's root file system booted as a container (systemd-nspawn, an
 * overlay on a tmpfs, its own network namespace) with systemd as PID 1, the
 * checkout shown read-only inside. One `banger system install` must give
 * three running, hardened services that the owner's `banger` talks to
 * without sudo; doctor must run through them; restart, an upgrade in place
 * and uninstall must leave what they promise. Nothing is faked; nothing on
 * this host changes (the container's writes die with its tmpfs).
 */
import { execFileSync, spawnSync } from "node:child_process";
import {
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  startRegistry,
  type RegistryProcess,
} from "../../services/image-puller/test-support/registry/registry-process.js";
import { OWNER_CAN_READ_CHECKOUT, ROOT } from "../integration/harness.js";
import { KERNEL_VERSION, TCG_GUEST_CONFIG, writeKernelPackage } from "./support/kernel-package.js";
import { REAL_GUEST_NEEDS } from "./support/needs.js";
import { bootContainer, onRootFileSystem, type Container, type RunResult } from "./support/nspawn.js";

const IS_ROOT = process.getuid?.() === 0;
const OWNER_ENTRY = spawnSync("getent", ["passwd", "1000"], { encoding: "utf8" }).stdout.trim().split(":");
const OWNER = {
  name: OWNER_ENTRY[0] ?? "",
  uid: 1000,
  gid: Number(OWNER_ENTRY[3] ?? 1000),
  home: OWNER_ENTRY[5] ?? "",
};
const NOBODY = { name: "nobody", uid: 65534, gid: 65534, home: "/nonexistent" };
/**
 * Where the checkout is inside the container: a fixed place outside /tmp (the units' PrivateTmp= would
 * hide a checkout there, and install refuses one), wherever this run's checkout is.
 */
const CHECKOUT = "/opt/banger-checkout";
const BANGER = `${CHECKOUT}/bin/banger`;
/** The same checkout under /tmp, where install must refuse it. */
const CHECKOUT_IN_TMP = "/tmp/banger-checkout";
const SERVICES = ["bangerd.service", "banger-privileged.service", "banger-image-puller.service"];
const SOCKETS = ["bangerd.socket", "bangerd-dns.socket", "banger-privileged.socket", "banger-image-puller.socket"];
/** The same thresholds as the offline scores in test/integration/system-install.test.ts, here for the live units. */
const THRESHOLDS: Record<string, number> = {
  "bangerd.service": 1.0,
  "banger-privileged.service": 2.5,
  "banger-image-puller.service": 1.5,
};

const unable = [
  !IS_ROOT && "root",
  !OWNER.name && "a user with uid 1000",
  !OWNER_CAN_READ_CHECKOUT && "a checkout uid 1000 can read",
].filter((m): m is string => typeof m === "string");
if (unable.length > 0) console.warn(`SKIPPING banger system against a live systemd: it needs ${unable.join(", ")}`);
const missing =
  unable.length > 0 ? unable : requireTools("banger system against a live systemd", ["systemd-nspawn", "systemctl"]);

/** What the VM part needs beyond the rest: it boots a real guest under the installed units (QEMU, TCG). */
const vmMissing =
  missing.length > 0
    ? missing
    : requireTools("VMs under the installed units", [
        ...REAL_GUEST_NEEDS,
        { what: "loop devices (/dev/loop-control)", present: existsSync("/dev/loop-control") },
      ]);
const vmIt = it.skipIf(vmMissing.length > 0);

let container: Container;
let registry: RegistryProcess | undefined;
let work: string;
/** QEMU's pid while the VM runs (it must survive a restart of the services). */
let qemuPid = "";

function log(line: string): void {
  console.log(`[systemd-live] ${line}`);
}

async function banger(args: readonly string[], user?: typeof OWNER): Promise<RunResult> {
  const started = Date.now();
  const result = await container.run([BANGER, ...args], { cwd: CHECKOUT, ...(user ? { user } : {}) });
  log(
    `banger ${args.join(" ")}${user ? ` (as ${user.name})` : ""} → exit ${result.code} in ${Date.now() - started} ms`,
  );
  if (result.code !== 0 && result.stderr !== "") log(`  stderr: ${result.stderr.trim()}`);
  return result;
}

async function sh(argv: readonly string[]): Promise<RunResult> {
  return container.run(argv);
}

async function unitProperty(unit: string, property: string): Promise<string> {
  return (await sh(["systemctl", "show", unit, `--property=${property}`, "--value"])).stdout.trim();
}

async function procStatus(pid: string): Promise<Record<string, string>> {
  const text = (await sh(["cat", `/proc/${pid}/status`])).stdout;
  return Object.fromEntries(
    text
      .split("\n")
      .map((line) => line.split(":\t"))
      .filter((pair) => pair.length === 2)
      .map(([key, value]) => [key ?? "", (value ?? "").trim()]),
  );
}

function opIdOf(output: string): string {
  const match = /op id: (op-[0-9a-f]+)/.exec(output);
  if (!match?.[1]) throw new Error(`no op id in:\n${output}`);
  return match[1];
}

describe.skipIf(missing.length > 0)("banger system against a live systemd (systemd-nspawn)", () => {
  beforeAll(async () => {
    const node = realpathSync(process.execPath);
    const binds = [
      `${ROOT}:${CHECKOUT}`,
      `${ROOT}:${CHECKOUT_IN_TMP}`,
      ...(onRootFileSystem(node) ? [] : [dirname(dirname(node))]),
    ];
    // The helper attaches loop devices: nspawn's /dev has none, so this host's nodes are shown inside.
    const devices = readdirSync("/dev")
      .filter((name) => /^loop(-control|[0-9]+)$/.test(name))
      .map((name) => `/dev/${name}`);
    let started = Date.now();
    container = await bootContainer({ binds, devices, log });
    log(`booted in ${Date.now() - started} ms`);
    if (vmMissing.length > 0) return;

    // What the owner brings: a config for QEMU under TCG, and a kernel package in their home
    // (bangerd's unit sees the owner's home read-only, and neither /tmp nor /lib/modules).
    started = Date.now();
    const home = join(container.rootDir, OWNER.home);
    const configDir = join(home, ".config", "banger");
    mkdirSync(configDir, { recursive: true });
    writeFileSync(join(configDir, "config.toml"), TCG_GUEST_CONFIG);
    const modules = await writeKernelPackage(KERNEL_VERSION ?? "", join(home, "kernel-pkg"));
    execFileSync("chown", ["-R", `${OWNER.uid}:${OWNER.gid}`, join(home, ".config"), join(home, "kernel-pkg")]);
    chownSync(home, OWNER.uid, OWNER.gid);

    // A registry on the container's 127.0.0.1, with a busybox + dropbear image pushed to it.
    work = mkdtempSync(join(tmpdir(), "banger-live-"));
    const inNet = ["nsenter", `--net=/proc/${container.leader}/ns/net`, "--"];
    registry = await startRegistry(join(work, "registry"), undefined, inNet);
    execFileSync(inNet[0] ?? "", [
      ...inNet.slice(1),
      process.execPath,
      join(ROOT, "test/e2e/support/guest-image.mjs"),
      ...["--out", join(work, "guest"), "--tag", "1", "--push", `${registry.host}/banger/guest:1`],
    ]);
    log(`kernel package (${modules} modules), config and a guest image in the registry in ${Date.now() - started} ms`);
  }, 180_000);

  // A failed step prints what the services and the guest said, so a failure in CI can be read afterwards.
  beforeEach((ctx) => {
    ctx.onTestFailed(async () => {
      if (!container) return;
      const journal = await sh([
        "journalctl",
        "--no-pager",
        "-o",
        "cat",
        "-n",
        "60",
        "--unit=bangerd.service",
        "--unit=banger-privileged.service",
      ]);
      log(`after the failure, the last lines of bangerd's and the helper's journals:\n${journal.stdout}`);
      if (qemuPid !== "") {
        const console = await banger(["vm", "logs", "one", "--tail", "40"], OWNER);
        log(`the guest's console:\n${console.stdout}${console.stderr}`);
      }
    });
  });

  afterAll(async () => {
    await container?.stop();
    await registry?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  }, 60_000);

  it("refuses status before install, and install refuses a non-root caller, changing nothing", async () => {
    const status = await banger(["system", "status"]);
    expect(status.code).toBe(1);
    expect(status.stderr).toMatch(/not installed/);

    const asOwner = await banger(["system", "install", "--owner", OWNER.name], OWNER);
    expect(asOwner.code).not.toBe(0);
    expect(asOwner.stderr).toMatch(/root/);
    const fromTmp = await container.run([`${CHECKOUT_IN_TMP}/bin/banger`, "system", "install", "--owner", OWNER.name]);
    expect(fromTmp.code).toBe(1);
    expect(fromTmp.stderr).toMatch(/the code is in \/tmp .*PrivateTmp=.*nothing was changed/);
    expect((await sh(["ls", "/etc/banger", "/etc/systemd/system/bangerd.service"])).code).not.toBe(0);
  });

  let installOpId = "";

  it("installs with one command: three running services that answer", async () => {
    const installed = await banger(["system", "install", "--owner", OWNER.name]);
    expect(installed.stderr).toBe("");
    expect(installed.code).toBe(0);
    expect(installed.stdout).toMatch(/all three services answer/);
    installOpId = opIdOf(installed.stdout);

    for (const unit of [...SERVICES, ...SOCKETS]) {
      expect(`${unit} ${await unitProperty(unit, "ActiveState")}`).toBe(`${unit} active`);
    }
    for (const unit of [...SOCKETS, "bangerd.service"]) {
      expect(`${unit} ${await unitProperty(unit, "UnitFileState")}`).toBe(`${unit} enabled`);
    }
    expect((await sh(["sysctl", "-n", "net.ipv4.ip_forward"])).stdout.trim()).toBe("1");
    const sockets = (
      await sh([
        "stat",
        "-c",
        "%n %U:%G %a",
        "/run/banger/orchestrator.sock",
        "/run/banger/privileged.sock",
        "/run/banger/image-puller.sock",
      ])
    ).stdout;
    expect(sockets).toContain(`/run/banger/orchestrator.sock ${OWNER.name}:`);
    expect(sockets).toContain("/run/banger/privileged.sock root:banger 660");
    expect(sockets).toMatch(/\/run\/banger\/image-puller\.sock \S+ 600/);
  });

  it("runs each service with the credentials and sandbox of its unit", async () => {
    const expected: Record<string, { uid: string; capBnd: string }> = {
      "bangerd.service": { uid: String(OWNER.uid), capBnd: "0000000000000000" },
      // CAP_CHOWN (0), CAP_SETGID (6), CAP_SETUID (7), CAP_NET_ADMIN (12), CAP_SYS_ADMIN (21)
      "banger-privileged.service": {
        uid: "0",
        capBnd: (2 ** 0 + 2 ** 6 + 2 ** 7 + 2 ** 12 + 2 ** 21).toString(16).padStart(16, "0"),
      },
      "banger-image-puller.service": {
        uid: await (async () => (await sh(["id", "-u", "banger-puller"])).stdout.trim())(),
        capBnd: "0000000000000000",
      },
    };
    for (const unit of SERVICES) {
      const pid = await unitProperty(unit, "MainPID");
      expect(Number(pid)).toBeGreaterThan(1);
      const status = await procStatus(pid);
      const want = expected[unit];
      expect({
        unit,
        uid: status["Uid"]?.split(/\s+/)[0],
        capBnd: status["CapBnd"],
        noNewPrivs: status["NoNewPrivs"],
        seccomp: status["Seccomp"],
      }).toEqual({
        unit,
        uid: want?.uid,
        capBnd: want?.capBnd,
        noNewPrivs: "1",
        seccomp: "2",
      });
      if (unit === "banger-privileged.service") {
        // Its RootDirectory: the OS, the code and banger's directories, nothing else of this machine.
        const top = (await sh(["ls", `/proc/${pid}/root/`])).stdout.split("\n").filter(Boolean);
        for (const hidden of ["boot", "srv", "mnt", "media"]) expect(top).not.toContain(hidden);
        expect(top).toContain("usr");
        // Of /opt only the checkout (the code it runs).
        expect((await sh(["ls", `/proc/${pid}/root/opt`])).stdout.trim()).toBe("banger-checkout");
        expect((await sh(["ls", `/proc/${pid}/root/var/lib`])).stdout.trim()).toBe("banger");
      }
      const score = await sh([
        "systemd-analyze",
        "security",
        "--no-pager",
        `--threshold=${Math.round((THRESHOLDS[unit] ?? 0) * 10)}`,
        unit,
      ]);
      log(`${unit}: ${score.stdout.trim().split("\n").at(-1) ?? ""}`);
      expect(score.code, score.stdout + score.stderr).toBe(0);
    }
  });

  it("lets the owner use banger without sudo, and nobody else", async () => {
    const list = await banger(["vm", "list"], OWNER);
    expect(list.stderr).toBe("");
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/^NAME\s+STATE/);

    const stranger = await banger(["vm", "list"], NOBODY);
    expect(stranger.code).not.toBe(0);
    expect(stranger.stderr).toMatch(/permission denied|EACCES/i);
  });

  it("puts the op id of one request into all three services' journals", async () => {
    expect(installOpId).not.toBe("");
    for (const unit of SERVICES) {
      const journal = await sh(["journalctl", "--no-pager", "-o", "cat", `--unit=${unit}`]);
      expect(`${unit}: ${journal.stdout.includes(installOpId)}`).toBe(`${unit}: true`);
    }
  });

  it("runs doctor through the installed services and says what this machine lacks", async () => {
    const doctor = await banger(["doctor", "--json"], OWNER);
    const report = JSON.parse(doctor.stdout) as {
      ok: boolean;
      checks: { name: string; capability: string; status: string; detail: string }[];
    };
    const byName = new Map(report.checks.map((c) => [c.capability ? `${c.capability}/${c.name}` : c.name, c]));
    for (const name of [
      "service-orchestrator",
      "service-privileged",
      "service-image-puller",
      "service-versions",
      "helper-privileges",
      "tun",
      "nat/ip-forwarding",
      "bridge",
    ]) {
      expect(`${name}: ${byName.get(name)?.status} ${byName.get(name)?.detail}`).toMatch(
        new RegExp(`^${name}: CHECK_STATUS_OK `),
      );
    }
    // No kernel imported yet: doctor says so and fails. The VMM: QEMU where the VM part configured it,
    // else Firecracker, which this machine lacks.
    expect(byName.get("default-kernel")?.status).toBe("CHECK_STATUS_FAIL");
    expect(byName.get("vmm-version")?.status).toBe(vmMissing.length === 0 ? "CHECK_STATUS_OK" : "CHECK_STATUS_FAIL");
    expect(report.ok).toBe(false);
    expect(doctor.code).toBe(1);
  });

  vmIt(
    "pulls an image through the puller's unit, imports a kernel and builds its initramfs, as the owner",
    async () => {
      // bangerd's unit hides /lib/modules: importing the running system's kernel says so and what to do.
      const fromRoot = await banger(["kernel", "import", "host", "/"], OWNER);
      expect(fromRoot.code).toBe(1);
      expect(fromRoot.stderr).toMatch(/bangerd cannot read \/lib\/modules: bangerd's unit .* into your home/);
      for (const args of [
        ["image", "pull", `${registry?.host ?? ""}/banger/guest:1`, "--name", "guest"],
        ["kernel", "import", "debian", join(OWNER.home, "kernel-pkg")],
        ["kernel", "initramfs", "debian"],
      ]) {
        const result = await banger(args, OWNER);
        expect(result.code, `${args.join(" ")}\n${result.stderr}`).toBe(0);
      }
    },
    300_000,
  );

  vmIt(
    "boots a VM with NAT under the units: a real kernel answers exec, <name>.vm resolves",
    async () => {
      const created = await banger(
        ["vm", "create", "--name", "one", "--image", "guest", "--nat", "--ssh-timeout", "120"],
        OWNER,
      );
      expect(created.code, created.stderr).toBe(0);
      expect(created.stderr).toMatch(/\n  wait-ssh\s+done/);
      const uname = await banger(["vm", "exec", "one", "--", "uname", "-r"], OWNER);
      expect(uname.stdout.trim()).toBe(KERNEL_VERSION);

      // QEMU runs as the owner, inside the helper's sandbox (its seccomp filter and no new privileges).
      qemuPid = (await sh(["pgrep", "-u", String(OWNER.uid), "-f", "qemu-system-x86_64"])).stdout.trim();
      expect(qemuPid).toMatch(/^[0-9]+$/);
      const qemu = await procStatus(qemuPid);
      expect([qemu["Uid"]?.split(/\s+/)[0], qemu["NoNewPrivs"], qemu["Seccomp"], qemu["CapEff"]]).toEqual([
        String(OWNER.uid),
        "1",
        "2",
        "0000000000000000",
      ]);

      // .vm DNS on the port-53 sockets bangerd-dns.socket passes, from the host and from the guest.
      const ip = (JSON.parse((await banger(["vm", "show", "one", "--json"], OWNER)).stdout) as { guestIp: string }[])[0]
        ?.guestIp;
      expect((await sh(["dig", "+short", "@172.30.0.1", "one.vm"])).stdout.trim()).toBe(ip);
      const lookup = await banger(["vm", "exec", "one", "--", "nslookup", "one.vm"], OWNER);
      expect(lookup.stdout).toContain(ip ?? "no ip");
      expect((await sh(["nft", "list", "table", "ip", "banger"])).stdout).toMatch(/masquerade/);
      // Stats come from the helper (bangerd's unit cannot see the VMM's /proc).
      const stats = await banger(["vm", "stats", "one", "--json"], OWNER);
      expect(stats.code, stats.stderr).toBe(0);
      expect(Number((JSON.parse(stats.stdout) as { memoryRssBytes: string | number }).memoryRssBytes)).toBeGreaterThan(
        16 << 20,
      );
    },
    300_000,
  );

  it("restarts in dependency order and comes back healthy", async () => {
    const before = await Promise.all(SERVICES.map((unit) => unitProperty(unit, "MainPID")));
    const restarted = await banger(["system", "restart"]);
    expect(restarted.stderr).toBe("");
    expect(restarted.code).toBe(0);
    const after = await Promise.all(SERVICES.map((unit) => unitProperty(unit, "MainPID")));
    for (const [i, unit] of SERVICES.entries()) {
      expect(`${unit} ${after[i] !== before[i] && Number(after[i]) > 1}`).toBe(`${unit} true`);
    }
    const status = await banger(["system", "status", "--json"]);
    expect(status.code).toBe(0);
    expect((JSON.parse(status.stdout) as { healthy: boolean }).healthy).toBe(true);
    if (qemuPid !== "") {
      // The VM lives through it (KillMode=process) and the new services find it.
      expect((await sh(["pgrep", "-f", "qemu-system-x86_64"])).stdout.trim()).toBe(qemuPid);
      const hostname = await banger(["vm", "exec", "one", "--", "cat", "/etc/hostname"], OWNER);
      expect(hostname.stdout).toBe("one\n");
    }
  }, 60_000);

  it("upgrades in place: install again keeps the owner's state", async () => {
    const db = "/var/lib/banger/banger.db";
    const before = (await sh(["stat", "-c", "%i", db])).stdout.trim();
    expect(before).not.toBe("");
    const again = await banger(["system", "install", "--owner", OWNER.name]);
    expect(again.stderr).toBe("");
    expect(again.code).toBe(0);
    expect((await sh(["stat", "-c", "%i", db])).stdout.trim()).toBe(before);
    expect((await banger(["vm", "list"], OWNER)).code).toBe(0);
  });

  it("comes back after a reboot: the sockets listen at boot and the owner's first call starts bangerd", async () => {
    const started = Date.now();
    await container.reboot();
    log(`rebooted in ${Date.now() - started} ms`);
    for (const unit of SOCKETS) {
      expect(`${unit} ${await unitProperty(unit, "ActiveState")}`).toBe(`${unit} active`);
    }
    // The container boots to basic.target: bangerd.service (WantedBy=multi-user.target) is started by
    // its socket on the owner's first call.
    const list = await banger(["vm", "list", "--json"], OWNER);
    expect(list.code, list.stderr).toBe(0);
    expect(await unitProperty("bangerd.service", "ActiveState")).toBe("active");
    if (qemuPid !== "") {
      // Its QEMU went down with the machine: bangerd found it gone and marked it stopped; it starts again.
      const vms = JSON.parse(list.stdout) as { name: string; state: string }[];
      expect(vms.map((vm) => [vm.name, vm.state])).toEqual([["one", "VM_STATE_STOPPED"]]);
      const restarted = await banger(["vm", "start", "one", "--ssh-timeout", "120"], OWNER);
      expect(restarted.code, restarted.stderr).toBe(0);
      qemuPid = (await sh(["pgrep", "-f", "qemu-system-x86_64"])).stdout.trim();
      expect(qemuPid).toMatch(/^[0-9]+$/);
      expect((await banger(["vm", "exec", "one", "--", "cat", "/etc/hostname"], OWNER)).stdout).toBe("one\n");
      expect((await sh(["dig", "+short", "@172.30.0.1", "one.vm"])).stdout.trim()).toMatch(/^172\.30\./);
    }
  }, 300_000);

  vmIt(
    "stops and deletes the VM, leaving no QEMU, tap, NAT rule, loop device or VM file",
    async () => {
      // With its agent stopped (SIGSTOP) and without its acpid the guest never hears the stop: the helper must
      // SIGTERM QEMU (the owner's process) after the timeout, from inside its unit.
      await banger(
        ["vm", "exec", "one", "--", "sh", "-c", "kill -STOP $(pidof qemu-ga) && kill $(cat /run/banger/acpid.pid)"],
        OWNER,
      );
      const stopped = await banger(["vm", "stop", "one", "--timeout", "2"], OWNER);
      expect(stopped.code, stopped.stderr).toBe(0);
      const journal = await sh(["journalctl", "--no-pager", "-o", "cat", "--unit=bangerd.service"]);
      expect(journal.stdout).toContain("the guest did not shut down in time; stopping the VMM");
      expect((await banger(["vm", "delete", "one"], OWNER)).code).toBe(0);
      expect((await sh(["pgrep", "-f", "qemu-system-x86_64"])).stdout).toBe("");
      const links = JSON.parse((await sh(["ip", "-j", "link", "show"])).stdout) as {
        ifname: string;
        ifalias?: string;
      }[];
      expect(links.filter((l) => l.ifalias?.startsWith("banger:tap:"))).toEqual([]);
      expect((await sh(["nft", "list", "table", "ip", "banger"])).stdout).not.toMatch(/masquerade/);
      expect((await sh(["losetup", "-l", "-n", "-O", "BACK-FILE"])).stdout).not.toContain("/var/lib/banger");
      expect((await sh(["ls", "-A", "/var/lib/banger/vms", "/run/banger/vms"])).stdout.trim()).toBe(
        "/run/banger/vms:\n\n/var/lib/banger/vms:",
      );
    },
    120_000,
  );

  it("uninstalls: units, sockets and metadata gone, state kept; --purge removes the state", async () => {
    const removed = await banger(["system", "uninstall"]);
    expect(removed.stderr).toBe("");
    expect(removed.code).toBe(0);
    for (const unit of [...SERVICES, ...SOCKETS]) {
      expect(`${unit} ${await unitProperty(unit, "LoadState")}`).toBe(`${unit} not-found`);
    }
    expect((await sh(["ls", "/etc/banger"])).code).not.toBe(0);
    expect((await sh(["ls", "/run/banger/orchestrator.sock"])).code).not.toBe(0);
    expect((await sh(["ls", "/var/lib/banger/banger.db"])).code).toBe(0);
    expect((await sh(["pgrep", "-f", `${CHECKOUT}/services/`])).stdout).toBe("");
    const owner = await banger(["vm", "list"], OWNER);
    expect(owner.code).not.toBe(0);

    expect((await banger(["system", "install", "--owner", OWNER.name])).code).toBe(0);
    const purged = await banger(["system", "uninstall", "--purge"]);
    expect(purged.code).toBe(0);
    expect((await sh(["ls", "/var/lib/banger"])).code).not.toBe(0);
    expect((await sh(["ls", "/var/cache/banger-image-puller"])).code).not.toBe(0);
    // Nothing of banger's network is left: no bridge, no (warm-pool) tap, no nftables table.
    const links = JSON.parse((await sh(["ip", "-j", "link", "show"])).stdout) as { ifname: string; ifalias?: string }[];
    expect(links.filter((l) => l.ifalias?.startsWith("banger:")).map((l) => l.ifname)).toEqual([]);
    expect((await sh(["nft", "list", "table", "ip", "banger"])).code).not.toBe(0);
  });
});
