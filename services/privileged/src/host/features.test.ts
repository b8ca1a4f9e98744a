/**
 * Host features by what works, not by what exists: a device node can be there
 * without its driver (a copied /dev, a container, libdevmapper making
 * /dev/mapper/control), and then the feature must read as absent, with why.
 * The nodes are real (mknod, as root) with the real major and minor numbers.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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
  it("is absent without /dev/kvm", () => {
    expect(kvmStatus(join(root, "none"))).toEqual({ usable: false, why: "/dev/kvm absent" });
  });

  it.skipIf(!IS_ROOT)("answers only when a driver does: a /dev/kvm node (10:232) is not KVM by itself", () => {
    const dev = join(root, "dev-kvm");
    mkdirSync(dev);
    execFileSync("mknod", [join(dev, "kvm"), "c", "10", "232"]);
    const status = kvmStatus(dev);
    if (listed("kvm")) {
      // A host with KVM: the node opens and answers API version 12.
      expect(status).toEqual({ usable: true, why: "" });
    } else {
      expect(status.usable).toBe(false);
      expect(status.why).toMatch(/^\/dev\/kvm exists but cannot be opened \((ENODEV|ENXIO)\): no KVM driver$/);
    }
  });
});
