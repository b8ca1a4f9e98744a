/**
 * Doctor with every probe scripted: a healthy host, hosts that lack things
 * (no KVM, an old or missing Firecracker, a helper that is down, versions that
 * differ, a subnet taken, no kernel…), probes that hang, and the order the
 * checks come in whatever answered first. The real probes are checked last
 * against real files (they must never make the SSH key).
 */
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { UnavailableError, type ServiceIdentity } from "@banger/common";
import { describe, expect, it } from "vitest";
import { DEFAULT_CONFIG, type BangerConfig } from "../config/index.js";
import { createDoctorProbes } from "../host/doctor-probes.js";
import { useTempDir } from "../../test-support/store.js";
import { dnsCapability, natCapability, workDiskCapability, type Capability } from "./capabilities.js";
import {
  createDoctor,
  firecrackerSupported,
  parseVmmVersion,
  type DoctorCatalog,
  type DoctorDeps,
  type DoctorProbes,
  type DoctorReport,
} from "./doctor.js";
import type { HostFeatures, HostPort } from "./host.js";
import type { PeerProbe, ServiceRole } from "./status.js";

const tempDir = useTempDir();
const CONFIG: BangerConfig = {
  ...DEFAULT_CONFIG,
  vmm: "firecracker",
  source: { path: "/home/ada/.config/banger/config.toml", exists: true },
};
const GIB = 1024 ** 3;

const identity = (over: Partial<ServiceIdentity> = {}): ServiceIdentity => ({
  version: "0.1.0",
  pid: 42,
  uid: 1000,
  gid: 1000,
  privilegesOk: true,
  privilegesDetail: "fine",
  ...over,
});

const ALL_FEATURES: HostFeatures = {
  tun: true,
  bridge: true,
  nftables: true,
  loop: true,
  deviceMapper: true,
  resolved: true,
  kvm: true,
  kernelRelease: "6.1.0-27-amd64",
};

/** Waits `ms` (0 = the next turn), so probes can answer in any order. */
const after = <T>(ms: number, value: T) => new Promise<T>((r) => setTimeout(() => r(value), ms));
const never = () => new Promise<never>(() => undefined);

function healthyProbes(delay = 0): DoctorProbes {
  return {
    kvmAccess: () => after(delay, { ok: true }),
    version: () =>
      after(delay, {
        kind: "output",
        text: "Firecracker v1.12.0\n\nSupported snapshot data format versions: v1.0.0\n",
      }),
    findTool: (tool) => after(delay, `/usr/sbin/${tool}`),
    ipForwarding: () => after(delay, true),
    lowPorts: () => after(delay, { ok: true, why: "holds CAP_NET_BIND_SERVICE" }),
    addresses: () =>
      after(delay, [
        { interface: "lo", cidr: "127.0.0.1/8" },
        { interface: "eth0", cidr: "192.168.1.20/24" },
      ]),
    freeSpace: () => after(delay, { freeBytes: 40 * GIB, totalBytes: 100 * GIB }),
    sshKey: () =>
      after(delay, {
        kind: "ok",
        path: "/home/ada/.config/banger/ssh/id_ed25519",
        managed: true,
        fingerprint: "SHA256:abc",
      }),
  };
}

const peer = (name: ServiceRole, answer: () => Promise<ServiceIdentity>): PeerProbe => ({
  name,
  socket: `/run/banger/${name}.sock`,
  identify: answer,
});

const catalog = (over: Partial<DoctorCatalog> = {}): DoctorCatalog => ({
  image: (name) => Promise.resolve(name === "debian" ? { defaultKernel: null } : undefined),
  kernelExists: (name) => Promise.resolve(name === "debian-6.1"),
  defaultKernel: () => Promise.resolve("debian-6.1"),
  kernelHasKit: () => Promise.resolve(true),
  ...over,
});

const noHost = {} as HostPort;
const dns = () => dnsCapability(() => Promise.resolve({ ok: true, detail: "answering <name>.vm on 172.30.0.1:53" }));

function deps(over: Partial<DoctorDeps> = {}): DoctorDeps {
  return {
    config: CONFIG,
    stateDir: "/var/lib/banger",
    self: () => ({ name: "orchestrator", socket: "/run/banger/orchestrator.sock", identity: identity() }),
    peers: [
      peer("privileged", () => Promise.resolve(identity({ uid: 0 }))),
      peer("image-puller", () => Promise.resolve(identity())),
    ],
    features: () => Promise.resolve(ALL_FEATURES),
    probes: healthyProbes(),
    catalog: catalog(),
    capabilities: [workDiskCapability(() => Promise.resolve()), natCapability(noHost, "bgr0"), dns()],
    ...over,
  };
}

const run = (d: DoctorDeps, clientVersion = "0.1.0") =>
  createDoctor(d).run(clientVersion, { signal: new AbortController().signal });
const byName = (report: DoctorReport, name: string) => {
  const found = report.checks.find((c) => (c.capability ? `${c.capability}/${c.name}` : c.name) === name);
  if (!found) throw new Error(`no check ${name}: ${report.checks.map((c) => c.name).join(", ")}`);
  return found;
};
const summary = (report: DoctorReport, name: string) => {
  const c = byName(report, name);
  return { status: c.status, detail: c.detail, hint: c.hint };
};

const ORDER = [
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
];
const names = (report: DoctorReport) => report.checks.map((c) => (c.capability ? `${c.capability}/${c.name}` : c.name));

describe("VMM versions", () => {
  it("are read from what Firecracker and QEMU print for --version", () => {
    expect(
      parseVmmVersion("firecracker", "Firecracker v1.9.1\n\nSupported snapshot data format versions: v1.0.0"),
    ).toBe("1.9.1");
    expect(parseVmmVersion("qemu-microvm", "QEMU emulator version 7.2.11 (Debian 1:7.2+dfsg-7+deb12u12)\n")).toBe(
      "7.2.11",
    );
    expect(parseVmmVersion("qemu-microvm", "QEMU emulator version 9.0\n")).toBe("9.0");
    expect(parseVmmVersion("firecracker", "QEMU emulator version 7.2.11")).toBeUndefined();
    expect(parseVmmVersion("firecracker", "usage: firecracker [--api-sock PATH]")).toBeUndefined();
  });

  it("from Firecracker 1.8 on are supported, compared number by number", () => {
    expect(["1.7.0", "1.8.0", "1.9.1", "1.10.0", "2.0.0", "0.25.2"].map((v) => [v, firecrackerSupported(v)])).toEqual([
      ["1.7.0", false],
      ["1.8.0", true],
      ["1.9.1", true],
      ["1.10.0", true],
      ["2.0.0", true],
      ["0.25.2", false],
    ]);
  });
});

describe("doctor", () => {
  it("on a healthy host says every check is ok, in a stable order, with the strategy and VMM it will use", async () => {
    const report = await run(deps());
    expect(names(report)).toEqual(ORDER);
    expect(report.checks.filter((c) => c.status !== "ok")).toEqual([]);
    expect(report.checks.every((c) => c.hint === "")).toBe(true);
    expect(report).toMatchObject({
      ok: true,
      rootDiskStrategy: "dm-snapshot (device-mapper present)",
      vmm: "firecracker (configured)",
    });
    expect(summary(report, "vmm-version").detail).toBe("Firecracker 1.12.0 at /usr/local/bin/firecracker");
    expect(summary(report, "service-privileged").detail).toBe("0.1.0, pid 42, uid 0, on /run/banger/privileged.sock");
    expect(summary(report, "service-versions").detail).toBe("all run 0.1.0, as this client does");
    expect(summary(report, "default-kernel").detail).toBe("debian-6.1 (the host default kernel)");
    expect(summary(report, "guest-kit").detail).toBe(
      "qemu-ga and dropbear at /usr/sbin/qemu-ga and /usr/sbin/dropbear; kernel debian-6.1's initrd has the kit",
    );
    expect(summary(report, "default-image").detail).toBe("debian is local");
    expect(summary(report, "bridge").detail).toBe("bgr0 (172.30.0.1/24) is made when the first VM starts");
    expect(summary(report, "state-dir-space").detail).toBe("40.0 GiB free of 100.0 GiB in /var/lib/banger");
  });

  it("keeps that order whichever probe answers first", async () => {
    const slowPeers = [
      peer("privileged", () => after(30, identity({ uid: 0 }))),
      peer("image-puller", () => after(1, identity())),
    ];
    const report = await run(
      deps({
        probes: healthyProbes(20),
        peers: slowPeers,
        features: () => after(10, ALL_FEATURES),
        catalog: catalog({ image: () => after(25, { defaultKernel: null }) }),
      }),
    );
    expect(names(report)).toEqual(ORDER);
  });

  it("on a machine like this one (no /dev/kvm, no device-mapper, no Firecracker) fails kvm and vmm-version with hints", async () => {
    const report = await run(
      deps({
        features: () => Promise.resolve({ ...ALL_FEATURES, kvm: false, deviceMapper: false }),
        probes: {
          ...healthyProbes(),
          kvmAccess: () => Promise.resolve({ ok: false, code: "ENOENT" }),
          version: () => Promise.resolve({ kind: "missing" }),
        },
      }),
    );
    expect(report.ok).toBe(false);
    expect(report.rootDiskStrategy).toBe("clone (no /dev/mapper/control)");
    expect(report.vmm).toBe("firecracker (configured; /dev/kvm absent)");
    expect(summary(report, "kvm")).toEqual({
      status: "fail",
      detail: "/dev/kvm does not exist: Firecracker cannot run",
      hint: "enable virtualization (VT-x/AMD-V) in the firmware and load kvm_intel or kvm_amd; inside a VM, enable nested virtualization",
    });
    expect(summary(report, "vmm-version")).toEqual({
      status: "fail",
      detail: "no Firecracker at /usr/local/bin/firecracker",
      hint: "install Firecracker >= 1.8 (github.com/firecracker-microvm/firecracker/releases) as /usr/local/bin/firecracker, or set firecracker.binary in /home/ada/.config/banger/config.toml",
    });
    expect(summary(report, "device-mapper")).toMatchObject({
      status: "warn",
      hint: "sudo modprobe dm_snapshot, for copy-on-write root disks",
    });
    expect(report.checks.filter((c) => c.status === "fail").map((c) => c.name)).toEqual(["kvm", "vmm-version"]);
  });

  it("says how to open /dev/kvm to the VMM when it exists but the owner cannot open it", async () => {
    const report = await run(
      deps({
        // The helper, which launches VMMs, checked the owner's access (bangerd's own open fails too).
        features: () =>
          Promise.resolve({
            ...ALL_FEATURES,
            kvm: false,
            kvmDetail:
              "/dev/kvm (uid 0, gid 108, mode 0660) is not open to the VMM, which runs as uid 1000 gid 1000 " +
              "without supplementary groups (group kvm does not count)",
          }),
        probes: {
          ...healthyProbes(),
          kvmAccess: () => Promise.resolve({ ok: false, code: "EACCES" }),
        },
      }),
    );
    expect(summary(report, "kvm")).toEqual({
      status: "fail",
      detail:
        "/dev/kvm (uid 0, gid 108, mode 0660) is not open to the VMM, which runs as uid 1000 gid 1000 " +
        "without supplementary groups (group kvm does not count): Firecracker cannot run",
      hint:
        'open /dev/kvm to all (a udev rule: KERNEL=="kvm", MODE="0666", then sudo udevadm trigger /dev/kvm): the helper ' +
        "starts VMMs as the owner without supplementary groups, so membership of group kvm does not reach them",
    });
  });

  it('with vmm = "auto" takes QEMU (TCG) where KVM does not answer and Firecracker where it does', async () => {
    // The helper's binaries: a QEMU that exists and may run, no Firecracker at its path.
    const qemu = join(tempDir(), "qemu-system-x86_64");
    writeFileSync(qemu, "#!/bin/sh\n", { mode: 0o755 });
    const firecracker = join(tempDir(), "firecracker");
    const config: BangerConfig = {
      ...CONFIG,
      vmm: "auto",
      qemu: { binary: qemu },
      firecracker: { binary: firecracker },
    };
    const vmmBinaries = { firecracker, qemu };
    const qemuVersion = (binary: string) =>
      Promise.resolve(
        binary === qemu
          ? ({ kind: "output", text: "QEMU emulator version 7.2.11\n" } as const)
          : ({ kind: "missing" } as const),
      );
    const noKvm = await run(
      deps({
        config,
        features: () =>
          Promise.resolve({
            ...ALL_FEATURES,
            kvm: false,
            kvmDetail: "/dev/kvm exists but cannot be opened (ENXIO): no KVM driver",
            vmmBinaries,
          }),
        probes: {
          ...healthyProbes(),
          kvmAccess: () => Promise.resolve({ ok: false, code: "ENXIO" }),
          version: qemuVersion,
        },
      }),
    );
    expect(noKvm.vmm).toBe(
      "qemu-microvm (auto: TCG (no Firecracker without KVM): /dev/kvm exists but cannot be opened (ENXIO): no KVM driver)",
    );
    expect(summary(noKvm, "kvm").status).toBe("warn"); // QEMU runs without it
    expect(summary(noKvm, "vmm-version")).toMatchObject({ status: "ok", detail: `QEMU 7.2.11 at ${qemu}` });

    // KVM answers but there is no Firecracker binary: still QEMU, now with KVM.
    const kvmNoFirecracker = await run(
      deps({
        config,
        features: () => Promise.resolve({ ...ALL_FEATURES, vmmBinaries }),
        probes: { ...healthyProbes(), version: qemuVersion },
      }),
    );
    expect(kvmNoFirecracker.vmm).toBe("qemu-microvm (auto: KVM, no Firecracker binary)");

    // Both: Firecracker.
    writeFileSync(firecracker, "#!/bin/sh\n", { mode: 0o755 });
    const both = await run(deps({ config, features: () => Promise.resolve({ ...ALL_FEATURES, vmmBinaries }) }));
    expect(both.vmm).toBe("firecracker (auto: KVM and Firecracker)");
  });

  it("with qemu-microvm and no KVM only warns (TCG), and reads QEMU's version", async () => {
    const report = await run(
      deps({
        config: { ...CONFIG, vmm: "qemu-microvm" },
        features: () => Promise.resolve({ ...ALL_FEATURES, kvm: false }),
        probes: {
          ...healthyProbes(),
          kvmAccess: () => Promise.resolve({ ok: false, code: "ENOENT" }),
          version: (binary) =>
            Promise.resolve(
              binary === "/usr/bin/qemu-system-x86_64"
                ? { kind: "output", text: "QEMU emulator version 7.2.11 (Debian 1:7.2+dfsg-7+deb12u12)\n" }
                : { kind: "missing" },
            ),
        },
      }),
    );
    expect(report.ok).toBe(true);
    expect(report.vmm).toBe("qemu-microvm (configured; TCG: /dev/kvm absent)");
    expect(summary(report, "kvm")).toMatchObject({
      status: "warn",
      detail: "/dev/kvm does not exist: QEMU falls back to TCG (much slower)",
    });
    expect(summary(report, "vmm-version")).toMatchObject({
      status: "ok",
      detail: "QEMU 7.2.11 at /usr/bin/qemu-system-x86_64",
    });
  });

  it("fails a Firecracker older than 1.8, one that is not executable, and one that prints something else", async () => {
    const withVersion = (version: DoctorProbes["version"]) =>
      run(deps({ probes: { ...healthyProbes(), version } })).then((r) => summary(r, "vmm-version"));
    expect(await withVersion(() => Promise.resolve({ kind: "output", text: "Firecracker v1.7.0\n" }))).toMatchObject({
      status: "fail",
      detail: "Firecracker 1.7.0 at /usr/local/bin/firecracker is older than 1.8",
    });
    // 1.8-1.11 run VMs; a fork's snapshot load needs network_overrides (1.12).
    expect(await withVersion(() => Promise.resolve({ kind: "output", text: "Firecracker v1.11.0\n" }))).toEqual({
      status: "warn",
      detail:
        "Firecracker 1.11.0 at /usr/local/bin/firecracker: VMs run, but forks (vm create --from) need 1.12 (snapshot loads with network_overrides)",
      hint: "for forks, install Firecracker >= 1.12 (github.com/firecracker-microvm/firecracker/releases) as /usr/local/bin/firecracker, or set firecracker.binary in /home/ada/.config/banger/config.toml",
    });
    expect(await withVersion(() => Promise.resolve({ kind: "output", text: "Firecracker v1.12.1\n" }))).toMatchObject({
      status: "ok",
    });
    expect(await withVersion(() => Promise.resolve({ kind: "not-executable" }))).toMatchObject({
      status: "fail",
      detail: "/usr/local/bin/firecracker is not executable by bangerd's user",
      hint: expect.stringMatching(/^make it executable \(chmod 755 \/usr\/local\/bin\/firecracker\)/) as unknown,
    });
    expect(await withVersion(() => Promise.resolve({ kind: "output", text: "hello\n" }))).toMatchObject({
      status: "fail",
      detail: '/usr/local/bin/firecracker --version printed no Firecracker version ("hello")',
    });
  });

  it("with the helper down fails its service check and says what it could not check, instead of guessing", async () => {
    const down = () => Promise.reject(new UnavailableError("no socket at /run/banger/privileged.sock"));
    const report = await run(
      deps({
        peers: [peer("privileged", down), peer("image-puller", () => Promise.resolve(identity()))],
        features: down,
      }),
    );
    expect(names(report)).toEqual(ORDER);
    expect(report.ok).toBe(false);
    expect(summary(report, "service-privileged")).toEqual({
      status: "fail",
      detail: "not reachable: no socket at /run/banger/privileged.sock",
      hint: "start it as root: sudo systemctl start banger-privileged.socket (installed), or sudo ./bin/banger dev up … (from a checkout)",
    });
    for (const name of [
      "helper-privileges",
      "tun",
      "kernel-bridge",
      "loop",
      "device-mapper",
      "nat/nftables",
      "dns/resolved",
    ]) {
      expect(summary(report, name), name).toEqual({
        status: "warn",
        detail: "not checked: the privileged helper is not reachable",
        hint: "",
      });
    }
    expect(report.checks.filter((c) => c.status === "fail").map((c) => c.name)).toEqual(["service-privileged"]);
    expect(summary(report, "service-versions").detail).toBe(
      "all run 0.1.0, as this client does (privileged not reachable)",
    );
    expect(report.rootDiskStrategy).toBe("unknown (the privileged helper is not reachable)");
  });

  it("fails service-versions when a service or the client runs another version", async () => {
    const oldPuller = deps({
      peers: [
        peer("privileged", () => Promise.resolve(identity({ uid: 0 }))),
        peer("image-puller", () => Promise.resolve(identity({ version: "0.0.9" }))),
      ],
    });
    expect(summary(await run(oldPuller), "service-versions")).toEqual({
      status: "fail",
      detail: "versions differ: orchestrator 0.1.0, privileged 0.1.0, image-puller 0.0.9, client 0.1.0",
      hint: "run one banger version everywhere: restart the services after an upgrade and use the CLI of the same build",
    });
    // No client version: the services are compared with each other only.
    expect(summary(await run(oldPuller, ""), "service-versions")).toMatchObject({
      status: "fail",
      detail: "versions differ: orchestrator 0.1.0, privileged 0.1.0, image-puller 0.0.9",
    });
    expect(summary(await run(deps(), ""), "service-versions")).toMatchObject({
      status: "ok",
      detail: "the services run 0.1.0",
    });
    expect(summary(await run(deps(), "0.2.0"), "service-versions")).toMatchObject({
      status: "fail",
      detail: "versions differ: orchestrator 0.1.0, privileged 0.1.0, image-puller 0.1.0, client 0.2.0",
    });
  });

  it("fails the helper's privileges when it lacks capabilities, and warns about a puller running as root", async () => {
    const report = await run(
      deps({
        peers: [
          peer("privileged", () =>
            Promise.resolve(
              identity({
                uid: 1000,
                privilegesOk: false,
                privilegesDetail: "missing CAP_NET_ADMIN, CAP_SYS_ADMIN: host operations that need them will fail",
              }),
            ),
          ),
          peer("image-puller", () =>
            Promise.resolve(
              identity({ uid: 0, privilegesOk: false, privilegesDetail: "runs as root; it parses untrusted images" }),
            ),
          ),
        ],
      }),
    );
    expect(summary(report, "helper-privileges")).toMatchObject({
      status: "fail",
      detail: "uid 1000: missing CAP_NET_ADMIN, CAP_SYS_ADMIN: host operations that need them will fail",
    });
    expect(summary(report, "service-privileged").status).toBe("ok");
    expect(summary(report, "service-image-puller")).toMatchObject({
      status: "warn",
      detail: "0.1.0, pid 42, uid 0, on /run/banger/image-puller.sock; runs as root; it parses untrusted images",
    });
  });

  it("fails the helper's privileges when its owner is root: no VM can start", async () => {
    const report = await run(
      deps({
        peers: [
          peer("privileged", () => Promise.resolve(identity({ uid: 0 }))),
          peer("image-puller", () => Promise.resolve(identity())),
        ],
        features: () => Promise.resolve({ ...ALL_FEATURES, ownerUid: 0 }),
      }),
    );
    expect(report.ok).toBe(false);
    expect(summary(report, "helper-privileges")).toMatchObject({
      status: "fail",
      detail: "VMs cannot start: the helper's owner is root (a VMM never runs as root)",
    });
    expect(summary(report, "helper-privileges").hint).toContain("dev up --owner USER");
    // An owner that is not root: the check is the capabilities' as before.
    const owned = await run(deps({ features: () => Promise.resolve({ ...ALL_FEATURES, ownerUid: 1000 }) }));
    expect(summary(owned, "helper-privileges").status).toBe("ok");
  });

  it("gives a probe that hangs its own failing or unknown check; the others still answer", async () => {
    const report = await run(
      deps({
        probeTimeoutMs: 50,
        probes: { ...healthyProbes(), version: never, freeSpace: never },
        peers: [peer("privileged", () => Promise.resolve(identity({ uid: 0 }))), peer("image-puller", never)],
      }),
    );
    expect(names(report)).toEqual(ORDER);
    expect(summary(report, "vmm-version")).toMatchObject({
      status: "fail",
      detail: "/usr/local/bin/firecracker --version: no answer within 0.05 s",
    });
    expect(summary(report, "service-image-puller")).toMatchObject({
      status: "fail",
      detail: "not reachable: no answer within 0.05 s",
    });
    expect(summary(report, "state-dir-space")).toMatchObject({
      status: "warn",
      detail: "could not measure /var/lib/banger: no answer within 0.05 s",
    });
    expect(summary(report, "kvm").status).toBe("ok");
  });

  it("checks the bridge's subnet against the host's addresses", async () => {
    const withAddresses = (cidrs: [string, string][]) =>
      run(
        deps({
          probes: {
            ...healthyProbes(),
            addresses: () => Promise.resolve(cidrs.map(([i, c]) => ({ interface: i, cidr: c }))),
          },
        }),
      ).then((r) => summary(r, "bridge"));
    expect(await withAddresses([["bgr0", "172.30.0.1/24"]])).toMatchObject({
      status: "ok",
      detail: "bgr0 is up with 172.30.0.1/24",
    });
    expect(await withAddresses([["docker0", "172.30.5.1/16"]])).toEqual({
      status: "fail",
      detail: "172.30.0.1/24 (network.address) overlaps docker0's 172.30.5.1/16: guests would be unreachable",
      hint: "choose a subnet no other interface uses for network.address in /home/ada/.config/banger/config.toml",
    });
    expect(await withAddresses([["bgr0", "10.9.0.1/24"]])).toMatchObject({
      status: "warn",
      detail: "bgr0 has 10.9.0.1/24, not 172.30.0.1/24 (network.address)",
    });
  });

  it("says where the default image comes from, and fails when there is no kernel to boot", async () => {
    const fresh = await run(
      deps({
        catalog: catalog({ image: () => Promise.resolve(undefined), defaultKernel: () => Promise.resolve(undefined) }),
      }),
    );
    expect(summary(fresh, "default-image")).toMatchObject({
      status: "ok",
      detail:
        "debian is not local yet: pulled from docker.io/library/debian:bookworm on first use (the built-in tiny, " +
        "built here, when that registry is unreachable and the create names no image)",
    });
    expect(summary(fresh, "default-kernel")).toEqual({
      status: "fail",
      detail: "no kernel imported, and none installed on this host that banger can use: VMs have nothing to boot",
      hint:
        "banger kernel import NAME DIR (a directory with vmlinux and initrd, or an unpacked distribution kernel " +
        "package), or install one (Debian, Ubuntu: apt install linux-image-amd64)",
    });
    // With a kernel installed on the host, the first VM imports it.
    const withHostKernel = await run(
      deps({
        catalog: catalog({
          image: () => Promise.resolve(undefined),
          defaultKernel: () => Promise.resolve(undefined),
          hostKernel: () => Promise.resolve({ version: "6.1.0-9-amd64", kernel: "/boot/vmlinuz-6.1.0-9-amd64" }),
        }),
      }),
    );
    expect(summary(withHostKernel, "default-kernel")).toMatchObject({
      status: "ok",
      detail:
        "none imported yet: the first VM imports this host's kernel 6.1.0-9-amd64 (/boot/vmlinuz-6.1.0-9-amd64) " +
        "and builds its initramfs",
    });
    const named = await run(
      deps({
        config: { ...CONFIG, defaultImage: "mine", defaultKernel: "k7" },
        catalog: catalog({ image: () => Promise.resolve(undefined) }),
      }),
    );
    expect(summary(named, "default-image")).toMatchObject({
      status: "fail",
      detail: "mine (default_image) is neither local nor in the catalog (alpine, debian, ubuntu)",
    });
    expect(summary(named, "default-kernel")).toMatchObject({
      status: "fail",
      detail: "kernel k7 (default_kernel in config) does not exist",
    });
    const imageKernel = await run(
      deps({ catalog: catalog({ image: () => Promise.resolve({ defaultKernel: "debian-6.1" }) }) }),
    );
    expect(summary(imageKernel, "default-kernel").detail).toBe("debian-6.1 (image debian's kernel)");
  });

  it("reports banger's own SSH key not made yet as fine, a configured one missing as a failure", async () => {
    const withKey = (sshKey: DoctorProbes["sshKey"]) =>
      run(deps({ probes: { ...healthyProbes(), sshKey } })).then((r) => summary(r, "ssh-key"));
    expect(await withKey(() => Promise.resolve({ kind: "missing", path: "/c/ssh/id_ed25519", managed: true }))).toEqual(
      {
        status: "ok",
        detail: "not made yet: banger makes /c/ssh/id_ed25519 when the first VM is created",
        hint: "",
      },
    );
    expect(await withKey(() => Promise.resolve({ kind: "missing", path: "/k/id", managed: false }))).toMatchObject({
      status: "fail",
      detail: "ssh.private_key /k/id does not exist",
    });
  });

  it("warns when the state directory runs short of space and fails below 1 GiB", async () => {
    const withFree = (freeBytes: number) =>
      run(
        deps({ probes: { ...healthyProbes(), freeSpace: () => Promise.resolve({ freeBytes, totalBytes: 20 * GIB }) } }),
      ).then((r) => summary(r, "state-dir-space").status);
    expect([await withFree(10 * GIB), await withFree(3 * GIB), await withFree(512 * 1024 ** 2)]).toEqual([
      "ok",
      "warn",
      "fail",
    ]);
  });

  it("fails the e2fsprogs tools it cannot find, and the work disk's own", async () => {
    const report = await run(
      deps({
        probes: {
          ...healthyProbes(),
          findTool: (tool) => Promise.resolve(["debugfs", "resize2fs"].includes(tool) ? undefined : `/sbin/${tool}`),
        },
      }),
    );
    expect(summary(report, "debugfs")).toEqual({
      status: "fail",
      detail: "debugfs not found in /usr/sbin:/usr/bin:/sbin:/bin: image ownership and guest files cannot be written",
      hint: "install e2fsprogs (e.g. sudo apt-get install e2fsprogs)",
    });
    expect(summary(report, "work-disk/work-disk-tools")).toMatchObject({
      status: "fail",
      detail: "resize2fs not found in /usr/sbin:/usr/bin:/sbin:/bin: work disks cannot be made or grown",
    });
  });

  it("fails without zstd (zstd layers) or busybox (the VMs' log relays), saying which package brings each", async () => {
    const report = await run(
      deps({
        probes: {
          ...healthyProbes(),
          findTool: (tool) => Promise.resolve(["zstd", "busybox"].includes(tool) ? undefined : `/sbin/${tool}`),
        },
      }),
    );
    expect(summary(report, "zstd")).toEqual({
      status: "fail",
      detail: "zstd not found in /usr/sbin:/usr/bin:/sbin:/bin: images with zstd layers cannot be pulled",
      hint: "install zstd (e.g. sudo apt-get install zstd)",
    });
    expect(summary(report, "busybox")).toEqual({
      status: "fail",
      detail:
        "busybox not found in /usr/sbin:/usr/bin:/sbin:/bin: VMs cannot start (their console and VMM logs go through busybox log relays)",
      hint: "install busybox-static (e.g. sudo apt-get install busybox-static)",
    });
    expect(report.ok).toBe(false);
  });

  it("fails the guest kit without its programs or patchelf, and warns when the default kernel's initrd lacks it", async () => {
    const without = await run(
      deps({
        probes: {
          ...healthyProbes(),
          findTool: (tool) => Promise.resolve(["qemu-ga", "patchelf"].includes(tool) ? undefined : `/sbin/${tool}`),
        },
      }),
    );
    expect(summary(without, "guest-kit")).toEqual({
      status: "fail",
      detail: "qemu-ga, patchelf not found: 'banger kernel initramfs' cannot build the guest kit (agent, SSH server)",
      hint: "sudo apt-get install qemu-guest-agent patchelf",
    });
    const old = await run(deps({ catalog: catalog({ kernelHasKit: () => Promise.resolve(false) }) }));
    expect(summary(old, "guest-kit")).toMatchObject({ status: "warn", hint: "banger kernel initramfs debian-6.1" });
  });

  it("warns about NAT without IP forwarding or nftables, and fails it when every VM wants NAT", async () => {
    const lacking = {
      features: () => Promise.resolve({ ...ALL_FEATURES, nftables: false }),
      probes: { ...healthyProbes(), ipForwarding: () => Promise.resolve(false) },
    };
    const optIn = await run(deps(lacking));
    expect(optIn.ok).toBe(true);
    expect(summary(optIn, "nat/ip-forwarding")).toEqual({
      status: "warn",
      detail: "net.ipv4.ip_forward = 0: VMs created with --nat cannot reach the outside",
      hint: "sudo sysctl -w net.ipv4.ip_forward=1, and keep it in /etc/sysctl.d/ (banger system install does)",
    });
    expect(summary(optIn, "nat/nftables").status).toBe("warn");
    const always = await run(deps({ ...lacking, capabilities: [natCapability(noHost, "bgr0", true)] }));
    expect(always.ok).toBe(false);
    expect(summary(always, "nat/ip-forwarding")).toMatchObject({
      status: "fail",
      detail: "net.ipv4.ip_forward = 0: new VMs (vm.nat = true) cannot reach the outside",
    });
  });

  it("warns when the helper launches another VMM binary than the one bangerd checked", async () => {
    const elsewhere = { firecracker: "/opt/fc/firecracker", qemu: "/usr/bin/qemu-system-x86_64" };
    const report = await run(deps({ features: () => Promise.resolve({ ...ALL_FEATURES, vmmBinaries: elsewhere }) }));
    expect(summary(report, "vmm-version")).toEqual({
      status: "warn",
      detail: "Firecracker 1.12.0 at /usr/local/bin/firecracker; but the helper launches /opt/fc/firecracker",
      hint:
        "set firecracker.binary in /home/ada/.config/banger/config.toml to /opt/fc/firecracker, or have the helper " +
        "launch it (sudo banger system install --firecracker /usr/local/bin/firecracker, or dev up --firecracker)",
    });
    const same = { firecracker: "/usr/local/bin/firecracker", qemu: "/usr/bin/qemu-system-x86_64" };
    const agreed = await run(deps({ features: () => Promise.resolve({ ...ALL_FEATURES, vmmBinaries: same }) }));
    expect(summary(agreed, "vmm-version").status).toBe("ok");
  });

  it("takes IP forwarding from the helper (the host's), and reads its own only when the helper could not", async () => {
    const ownBlocked = { ...healthyProbes(), ipForwarding: () => Promise.reject(new Error("EACCES /proc/sys")) };
    const fromHelper = await run(
      deps({ features: () => Promise.resolve({ ...ALL_FEATURES, ipForward: false }), probes: ownBlocked }),
    );
    expect(summary(fromHelper, "nat/ip-forwarding").detail).toBe(
      "net.ipv4.ip_forward = 0: VMs created with --nat cannot reach the outside",
    );
    const helperOn = await run(
      deps({
        features: () => Promise.resolve({ ...ALL_FEATURES, ipForward: true }),
        probes: { ...healthyProbes(), ipForwarding: () => Promise.resolve(false) },
      }),
    );
    expect(summary(helperOn, "nat/ip-forwarding").status).toBe("ok");
    const neither = await run(deps({ probes: ownBlocked }));
    expect(summary(neither, "nat/ip-forwarding")).toEqual({
      status: "warn",
      detail: "cannot read /proc/sys/net/ipv4/ip_forward",
      hint: "",
    });
  });

  it("warns instead of failing the bridge when the helper cannot see the kernel's modules (its unit)", async () => {
    const hidden = await run(
      deps({ features: () => Promise.resolve({ ...ALL_FEATURES, bridge: false, modulesVisible: false }) }),
    );
    expect(summary(hidden, "kernel-bridge")).toEqual({
      status: "warn",
      detail:
        "no bridge module is loaded, and the helper cannot see the installed ones: the first VM loads it if the kernel has it",
      hint: "sudo modprobe bridge, to be sure now",
    });
    const visible = await run(
      deps({ features: () => Promise.resolve({ ...ALL_FEATURES, bridge: false, modulesVisible: true }) }),
    );
    expect(summary(visible, "kernel-bridge")).toEqual({
      status: "fail",
      detail: "the kernel cannot make bridges (no bridge module)",
      hint: "sudo modprobe bridge",
    });
  });

  it("fails DNS when bangerd may not listen on port 53, before and after the bridge exists", async () => {
    const blocked = {
      ok: false,
      why: "uid 1000 without CAP_NET_BIND_SERVICE (net.ipv4.ip_unprivileged_port_start is 1024)",
    };
    const before = await run(deps({ probes: { ...healthyProbes(), lowPorts: () => Promise.resolve(blocked) } }));
    expect(summary(before, "dns/dns")).toMatchObject({
      status: "fail",
      detail:
        "bangerd cannot listen on port 53: uid 1000 without CAP_NET_BIND_SERVICE (net.ipv4.ip_unprivileged_port_start is 1024); <name>.vm will not resolve",
    });
    const refused = dnsCapability(() =>
      Promise.resolve({ ok: false, detail: "cannot listen on 172.30.0.1:53: EACCES" }),
    );
    await refused.prepareHost?.({ address: "172.30.0.1", prefixLength: 24, netmask: "255.255.255.0" });
    const afterBridge = await run(deps({ capabilities: [refused] }));
    expect(summary(afterBridge, "dns/dns")).toMatchObject({
      status: "fail",
      detail: "cannot listen on 172.30.0.1:53: EACCES",
    });
    expect(summary(await run(deps()), "dns/dns")).toMatchObject({
      status: "ok",
      detail: "listens on the bridge address, port 53, when the first VM starts (bangerd holds CAP_NET_BIND_SERVICE)",
    });
  });

  it("runs capabilities' checks in dependency order, and turns one that throws into a failing check", async () => {
    const broken: Capability = {
      name: "broken",
      dependsOn: ["dns"],
      doctorChecks: () => Promise.reject(new Error("boom")),
    };
    const report = await run(deps({ capabilities: [broken, dns()] }));
    expect(report.checks.filter((c) => c.capability).map((c) => `${c.capability}/${c.name}:${c.status}`)).toEqual([
      "dns/dns:ok",
      "dns/resolved:ok",
      "broken/broken:fail",
    ]);
    expect(summary(report, "broken/broken").detail).toBe("its checks did not complete: boom");
  });
});

describe("the real probes", () => {
  it("read banger's own SSH key without ever making it, and find tools on bangerd's PATH", async () => {
    const configDir = join(tempDir(), "config");
    const probes = createDoctorProbes({ configDir, configuredKeyPath: null });
    expect(await probes.sshKey()).toEqual({
      kind: "missing",
      path: join(configDir, "ssh", "id_ed25519"),
      managed: true,
    });
    expect(existsSync(configDir)).toBe(false);
    expect(await probes.findTool("sh")).toMatch(/^\/(usr\/)?s?bin\/sh$/);
    expect(await probes.findTool("no-such-tool-here")).toBeUndefined();
  });

  it("say a configured key that is readable by others is unusable, and run --version with a deadline", async () => {
    const key = join(tempDir(), "id");
    writeFileSync(key, "x", { mode: 0o644 });
    const probes = createDoctorProbes({ configDir: join(tempDir(), "c"), configuredKeyPath: key });
    expect(await probes.sshKey()).toMatchObject({
      kind: "unusable",
      managed: false,
      message: expect.stringContaining("chmod 600") as unknown,
    });
    const bin = join(tempDir(), "bin");
    mkdirSync(bin);
    const fake = join(bin, "firecracker");
    writeFileSync(fake, "#!/bin/sh\necho 'Firecracker v1.9.1'\n", { mode: 0o755 });
    const signal = new AbortController().signal;
    expect(await probes.version(fake, signal)).toEqual({ kind: "output", text: "Firecracker v1.9.1\n" });
    expect(await probes.version(join(bin, "absent"), signal)).toEqual({ kind: "missing" });
    expect(await probes.version(bin, signal)).toEqual({ kind: "not-executable" });
  });
});
