/**
 * Host features by what works, not by what exists: a device node can be there
 * without its driver (a copied /dev, a container, libdevmapper making
 * /dev/mapper/control), and then the feature must read as absent, with why.
 * The nodes are real (mknod, as root) with the real major and minor numbers.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { deviceMapperStatus, kvmStatus, probeHostFeatures } from "./features.js";

const IS_ROOT = process.getuid?.() === 0;
const root = mkdtempSync(join(tmpdir(), "banger-features-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const hostMisc = readFileSync("/proc/misc", "utf8");
const listed = (name: string) => new RegExp(`^\\s*\\d+ ${name}$`, "m").test(hostMisc);

describe("device-mapper", () => {
  it("is absent without /dev/mapper/control", () => {
    expect(deviceMapperStatus({ dev: join(root, "none"), proc: "/proc" })).toEqual({
      usable: false,
      why: "no /dev/mapper/control",
    });
  });

  it.skipIf(!IS_ROOT)("is absent when the node exists but the kernel lists no device-mapper driver", () => {
    const dev = join(root, "dev-dm");
    mkdirSync(join(dev, "mapper"), { recursive: true });
    execFileSync("mknod", [join(dev, "mapper", "control"), "c", "10", "236"]);
    const noDriver = join(root, "proc-without-dm");
    mkdirSync(noDriver);
    writeFileSync(join(noDriver, "misc"), "183 hw_random\n237 loop-control\n");
    expect(deviceMapperStatus({ dev, proc: noDriver })).toEqual({
      usable: false,
      why: "/dev/mapper/control exists but the kernel has no device-mapper driver",
    });
    const withDriver = join(root, "proc-with-dm");
    mkdirSync(withDriver);
    writeFileSync(join(withDriver, "misc"), "183 hw_random\n236 device-mapper\n");
    expect(deviceMapperStatus({ dev, proc: withDriver })).toEqual({ usable: true, why: "" });
  });

  it("on this host, follows the kernel's own list of misc drivers", () => {
    const features = probeHostFeatures();
    expect(features.deviceMapper).toBe(listed("device-mapper"));
    expect(features.deviceMapperDetail === "").toBe(features.deviceMapper);
  });
});

describe("KVM", () => {
  /** A /sys with these modules only. */
  const sysWith = (...modules: string[]) => {
    const sys = mkdtempSync(join(root, "sys-"));
    for (const module of modules) mkdirSync(join(sys, "module", module), { recursive: true });
    return sys;
  };
  /** A real /dev/kvm node (10:232) in a directory of its own, with this owner and mode. */
  const kvmNode = (uid = 0, gid = 0, mode = 0o660) => {
    const dev = mkdtempSync(join(root, "dev-"));
    execFileSync("mknod", [join(dev, "kvm"), "c", "10", "232"]);
    chownSync(join(dev, "kvm"), uid, gid);
    chmodSync(join(dev, "kvm"), mode);
    return dev;
  };
  const OWNER = { uid: 1000, gid: 1000 };

  it("is absent without /dev/kvm", () => {
    expect(kvmStatus({ dev: join(root, "none") })).toEqual({ usable: false, why: "/dev/kvm absent" });
  });

  it.skipIf(!IS_ROOT)("answers only when a driver does: a /dev/kvm node (10:232) is not KVM by itself", () => {
    const status = kvmStatus({ dev: kvmNode(), sys: sysWith("kvm", "kvm_intel") });
    if (listed("kvm")) {
      // A host with a KVM driver: the node opens and answers API version 12.
      expect(status).toEqual({ usable: true, why: "" });
    } else {
      expect(status.usable).toBe(false);
      expect(status.why).toMatch(/^\/dev\/kvm exists but cannot be opened \((ENODEV|ENXIO)\): no KVM driver$/);
    }
  });

  // What follows needs a driver behind the node (this kernel's /proc/misc lists kvm).
  const withDriver = IS_ROOT && listed("kvm");
  if (!withDriver) console.log("features.test: no KVM driver here: the driver-kind and VMM-access tests skip");

  it.skipIf(!withDriver)(
    "a driver without hardware virtualization (kvm_pvm, or none of kvm_intel/kvm_amd) is not usable",
    () => {
      const dev = kvmNode(0, 0, 0o666);
      expect(kvmStatus({ dev, sys: sysWith("kvm", "kvm_pvm") })).toEqual({
        usable: false,
        why: "/dev/kvm is kvm_pvm's (KVM without hardware virtualization), which boots only PVM guest kernels",
      });
      expect(kvmStatus({ dev, sys: sysWith("kvm") })).toEqual({
        usable: false,
        why: "/dev/kvm answers but no hardware KVM driver (kvm_intel or kvm_amd) is loaded",
      });
      expect(kvmStatus({ dev, sys: sysWith("kvm", "kvm_amd") })).toEqual({ usable: true, why: "" });
    },
  );

  it.skipIf(!withDriver)("is usable only when the VMM, as the owner without supplementary groups, may open it", () => {
    const sys = sysWith("kvm", "kvm_intel");
    // Debian's usual node: root:kvm 0660. The owner's membership of kvm does not reach the VMM.
    const status = kvmStatus({ dev: kvmNode(0, 108, 0o660), sys, vmmUser: OWNER });
    expect(status.usable).toBe(false);
    expect(status.why).toBe(
      "/dev/kvm (uid 0, gid 108, mode 0660) is not open to the VMM, which runs as uid 1000 gid 1000 without " +
        "supplementary groups (group kvm does not count)",
    );
    // Read alone is not enough: a VMM opens it read-write.
    expect(kvmStatus({ dev: kvmNode(0, 0, 0o664), sys, vmmUser: OWNER }).usable).toBe(false);
    for (const [uid, gid, mode] of [
      [0, 108, 0o666],
      [1000, 0, 0o600],
      [0, 1000, 0o060],
    ] as const) {
      expect(
        kvmStatus({ dev: kvmNode(uid, gid, mode), sys, vmmUser: OWNER }),
        `${uid}:${gid} ${mode.toString(8)}`,
      ).toEqual({
        usable: true,
        why: "",
      });
    }
    // A root owner's VMM opens anything.
    expect(kvmStatus({ dev: kvmNode(0, 0, 0o600), sys, vmmUser: { uid: 0, gid: 0 } }).usable).toBe(true);
  });
});
