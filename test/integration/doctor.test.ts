/**
 * `banger doctor` through the real three services and the CLI, set up as an
 * installed banger runs: the orchestrator and the puller as the owner (uid
 * 1000), the privileged helper as root (here inside a throwaway network
 * namespace). The tests assert what a user of this machine sees. It has no
 * KVM (and, where /dev/mapper/control is absent, no device-mapper): those
 * checks are asserted as they come out here. Firecracker is looked for at a
 * path in the test's directory (config firecracker.binary): first absent,
 * then a stand-in script that only answers `--version` (no VM is started).
 */
import { chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OWNER_CAN_READ_CHECKOUT, startCluster, type Cluster } from "./harness.js";
import { IS_ROOT, NETNS_TOOLS, createNetNs, type NetNs } from "./netns.js";
import { findHostKernel } from "../../services/orchestrator/src/core/kernels.js";

const OWNER = 1000;
const RUNS =
  IS_ROOT && OWNER_CAN_READ_CHECKOUT && requireTools("banger doctor on this machine", NETNS_TOOLS).length === 0;
const live = describe.skipIf(!RUNS);
const HAS_KVM = existsSync("/dev/kvm");
// The driver, as the helper tells it: the node alone can exist without it.
const HAS_DM = existsSync("/dev/mapper/control") && /^\s*\d+ device-mapper$/m.test(readFileSync("/proc/misc", "utf8"));
const STRATEGY = HAS_DM ? "dm-snapshot (device-mapper present)" : "clone (no /dev/mapper/control)";

let ns: NetNs;
let cluster: Cluster;
let firecracker: string;
let configPath: string;

beforeAll(async () => {
  if (!RUNS) return;
  console.log(
    `doctor on this machine: /dev/kvm ${HAS_KVM ? "present" : "absent"}, device-mapper ${HAS_DM ? "present" : "absent"}; ` +
      "Firecracker is a path in the test's directory (absent, then a script that answers --version)",
  );
  ns = createNetNs();
  // firecracker.binary for the orchestrator and --firecracker for the helper name the same path (else doctor warns).
  const bin = mkdtempSync(join(tmpdir(), "banger-doctor-bin-"));
  firecracker = join(bin, "firecracker");
  cluster = await startCluster({ owner: OWNER, netns: ns.name, helperArgs: ["--firecracker", firecracker] });
  // The orchestrator reads its config at start-up: restart it with firecracker.binary in the test's directory.
  await cluster.stop("orchestrator");
  const configDir = join(cluster.dir, "config", "banger");
  configPath = join(configDir, "config.toml");
  mkdirSync(configDir, { recursive: true });
  writeFileSync(configPath, `vmm = "firecracker"\n[firecracker]\nbinary = "${firecracker}"\n`);
  for (const path of [join(cluster.dir, "config"), configDir, configPath, bin]) chownSync(path, OWNER, OWNER);
  await cluster.start("orchestrator");
});

afterAll(async () => {
  if (!RUNS) return;
  await cluster.shutdown();
  ns.remove();
  rmSync(dirname(firecracker), { recursive: true, force: true });
});

interface Row {
  status: string;
  detail: string;
  hint: string;
}

/** The table's rows by check name, each with the hint printed under it ("" when none). */
function rowsOf(stdout: string): Map<string, Row> {
  const rows = new Map<string, Row>();
  let last: Row | undefined;
  for (const line of stdout.split("\n").slice(1)) {
    const row = /^(ok|WARN|FAIL)\s+(\S+)\s+(.*)$/.exec(line);
    const hint = /^\s+→ (.*)$/.exec(line);
    if (row) {
      last = { status: row[1] ?? "", detail: row[3] ?? "", hint: "" };
      rows.set(row[2] ?? "", last);
    } else if (hint && last) {
      last.hint = hint[1] ?? "";
    }
  }
  return rows;
}

interface DoctorJson {
  opId: string;
  ok: boolean;
  rootDiskStrategy: string;
  vmm: string;
  checks: { name: string; status: string; detail: string; hint: string; capability: string }[];
}

const doctorJson = async () => {
  const result = await cluster.cli(["doctor", "--json"]);
  return { code: result.code, report: JSON.parse(result.stdout) as DoctorJson, stderr: result.stderr };
};
const jsonCheck = (report: DoctorJson, name: string) => report.checks.find((c) => c.name === name);

live("banger doctor", () => {
  it("tells a user of this machine what it lacks: KVM and the VMM fail with hints, the services are fine, exit code 1", async () => {
    const result = await cluster.cli(["doctor"]);
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr).toBe("");
    expect(result.stdout.split("\n")[0]).toMatch(/^STATUS\s+CHECK\s+DETAIL$/);
    const rows = rowsOf(result.stdout);

    if (!HAS_KVM) {
      expect(rows.get("kvm")).toEqual({
        status: "FAIL",
        detail: "/dev/kvm does not exist: Firecracker cannot run",
        hint: "enable virtualization (VT-x/AMD-V) in the firmware and load kvm_intel or kvm_amd; inside a VM, enable nested virtualization",
      });
      expect(result.stdout).toContain("\nVMM: firecracker (configured; /dev/kvm absent)\n");
    } else {
      console.log(`/dev/kvm exists here: kvm says ${JSON.stringify(rows.get("kvm"))}`);
    }
    expect(rows.get("vmm-version")).toEqual({
      status: "FAIL",
      detail: `no Firecracker at ${firecracker}`,
      hint: `install Firecracker >= 1.8 (github.com/firecracker-microvm/firecracker/releases) as ${firecracker}, or set firecracker.binary in ${configPath}`,
    });
    expect(result.stdout).toContain(`\nroot disks: ${STRATEGY}\n`);
    expect(rows.get("device-mapper")?.status).toBe(HAS_DM ? "ok" : "WARN");

    // Every service reachable, as the user it should run as, at the CLI's version.
    expect(rows.get("service-orchestrator")).toEqual({
      status: "ok",
      detail: expect.stringMatching(
        new RegExp(`^0\\.1\\.0, pid \\d+, uid 1000, on ${cluster.socket("orchestrator")}$`),
      ) as unknown,
      hint: "",
    });
    expect(rows.get("service-privileged")?.detail).toMatch(/^0\.1\.0, pid \d+, uid 0, on /);
    expect(rows.get("service-image-puller")?.detail).toMatch(/^0\.1\.0, pid \d+, uid 1000, on /);
    expect(rows.get("service-versions")).toEqual({
      status: "ok",
      detail: "all run 0.1.0, as this client does",
      hint: "",
    });
    expect(rows.get("helper-privileges")?.status).toBe("ok");

    // A fresh install: no kernel yet (the host's is imported on first use, else a failure), the default image is
    // pulled on first use (tiny stands in offline), the key made on first create.
    const hostKernel = await findHostKernel();
    expect(rows.get("default-kernel")).toMatchObject(
      hostKernel
        ? {
            status: "ok",
            detail: `none imported yet: the first VM imports this host's kernel ${hostKernel.version} (${hostKernel.kernel}) and builds its initramfs`,
          }
        : {
            status: "FAIL",
            detail: "no kernel imported, and none installed on this host that banger can use: VMs have nothing to boot",
          },
    );
    expect(rows.get("default-image")).toMatchObject({
      status: "ok",
      detail:
        "debian is not local yet: pulled from docker.io/library/debian:bookworm on first use (the built-in tiny, " +
        "built here, when that registry is unreachable and the create names no image)",
    });
    const key = join(cluster.dir, "config", "banger", "ssh", "id_ed25519");
    expect(rows.get("ssh-key")).toMatchObject({
      status: "ok",
      detail: `not made yet: banger makes ${key} when the first VM is created`,
    });
    expect(existsSync(key)).toBe(false);
    for (const tool of ["mkfs-ext4", "debugfs", "e2fsck"]) expect(rows.get(tool)?.status, tool).toBe("ok");
    expect(rows.get("state-dir-space")?.detail).toContain(`free of`);
    expect(rows.get("state-dir-space")?.detail).toContain(cluster.stateDir);

    // bangerd runs as uid 1000 without CAP_NET_BIND_SERVICE here: `.vm` names cannot work.
    const unprivilegedStart = Number(readFileSync("/proc/sys/net/ipv4/ip_unprivileged_port_start", "utf8"));
    expect(rows.get("dns/dns")?.status).toBe(unprivilegedStart <= 53 ? "ok" : "FAIL");

    // Hints appear under warnings and failures only.
    for (const [name, row] of rows) expect(row.hint === "", name).toBe(row.status === "ok");
    const fails = [...rows.values()].filter((r) => r.status === "FAIL").length;
    expect(result.stdout).toMatch(
      new RegExp(
        `\\n${rows.size} checks: ${fails} failures?, \\d+ warnings?; banger \\(or the feature named\\) cannot work until each FAIL is fixed\\n`,
      ),
    );
  });

  it("--json gives the same checks for scripts, in a stable order, and one op id across the three services", async () => {
    const { code, report } = await doctorJson();
    expect(code).toBe(1);
    expect(report).toMatchObject({ ok: false, rootDiskStrategy: STRATEGY });
    expect(report.opId).toMatch(/^op-[0-9a-f]{12}$/);
    expect(report.checks.map((c) => (c.capability ? `${c.capability}/${c.name}` : c.name))).toEqual([
      "kvm",
      "vmm-version",
      "service-orchestrator",
      "service-privileged",
      "service-image-puller",
      "service-versions",
      "helper-privileges",
      "tun",
      "kernel-bridge",
      "loop",
      "device-mapper",
      "mkfs-ext4",
      "debugfs",
      "e2fsck",
      "zstd",
      "busybox",
      "bridge",
      "default-image",
      "default-kernel",
      "guest-kit",
      "ssh-key",
      "state-dir-space",
      "work-disk/work-disk-tools",
      "nat/nftables",
      "nat/ip-forwarding",
      "dns/dns",
      "dns/resolved",
    ]);
    expect(jsonCheck(report, "vmm-version")).toMatchObject({
      status: "CHECK_STATUS_FAIL",
      detail: `no Firecracker at ${firecracker}`,
    });
    expect(jsonCheck(report, "tun")).toMatchObject({ status: "CHECK_STATUS_OK", hint: "" });
    // The helper and the puller were asked with the CLI's op id.
    const services = new Set(cluster.linesWithOpId(report.opId).map((l) => l["service"]));
    expect([...services].sort()).toEqual(["image-puller", "orchestrator", "privileged"]);
  });

  it("reads the configured Firecracker's version: 1.12.0 passes, 1.9.1 runs VMs but no forks, 1.7.0 is too old", async () => {
    const fake = (version: string) =>
      writeFileSync(firecracker, `#!/bin/sh\necho "Firecracker v${version}"\n`, { mode: 0o755 });
    fake("1.12.0");
    chownSync(firecracker, OWNER, OWNER);
    let { report } = await doctorJson();
    expect(jsonCheck(report, "vmm-version")).toMatchObject({
      status: "CHECK_STATUS_OK",
      detail: `Firecracker 1.12.0 at ${firecracker}`,
      hint: "",
    });
    fake("1.9.1");
    ({ report } = await doctorJson());
    expect(jsonCheck(report, "vmm-version")).toMatchObject({
      status: "CHECK_STATUS_WARN",
      detail: `Firecracker 1.9.1 at ${firecracker}: VMs run, but forks (vm create --from) need 1.12 (snapshot loads with network_overrides)`,
    });
    fake("1.7.0");
    ({ report } = await doctorJson());
    expect(jsonCheck(report, "vmm-version")).toMatchObject({
      status: "CHECK_STATUS_FAIL",
      detail: `Firecracker 1.7.0 at ${firecracker} is older than 1.8`,
    });
    rmSync(firecracker);
  });

  it("with the image puller stopped, fails its check with how to start it; the rest still answer", async () => {
    await cluster.stop("image-puller");
    try {
      const result = await cluster.cli(["doctor"]);
      expect(result.code).toBe(1);
      const rows = rowsOf(result.stdout);
      expect(rows.get("service-image-puller")).toEqual({
        status: "FAIL",
        detail: expect.stringContaining(`not reachable: `) as unknown,
        hint: "start it: sudo systemctl start banger-image-puller.service (installed), or ./bin/banger dev up … (from a checkout)",
      });
      expect(rows.get("service-image-puller")?.detail).toContain(cluster.socket("image-puller"));
      expect(rows.get("service-versions")).toMatchObject({
        status: "ok",
        detail: "all run 0.1.0, as this client does (image-puller not reachable)",
      });
      expect(rows.get("service-privileged")?.status).toBe("ok");
      expect(rows.get("tun")?.status).toBe("ok");
    } finally {
      await cluster.start("image-puller");
    }
  });
});

describe.skipIf(!IS_ROOT)("banger doctor with a helper whose owner is root", () => {
  it("fails helper-privileges: VMs cannot start (every launch would be refused)", async () => {
    // Everything as root, as a plain-root `dev up` once ran it; the helper told of no owner (no sudo either).
    const rooted = await startCluster();
    try {
      await rooted.stop("privileged");
      await rooted.start("privileged", { SUDO_UID: "", SUDO_GID: "" });
      const result = await rooted.cli(["doctor", "--json"]);
      expect(result.code).toBe(1);
      const report = JSON.parse(result.stdout) as DoctorJson;
      expect(jsonCheck(report, "helper-privileges")).toMatchObject({
        status: "CHECK_STATUS_FAIL",
        detail: "VMs cannot start: the helper's owner is root (a VMM never runs as root)",
      });
    } finally {
      await rooted.shutdown();
    }
  });
});
