/**
 * The built-in image `tiny`, built by the real builder from a static busybox
 * (the host's, where busybox-static is installed): busybox and its applets'
 * links owned by root, the /etc files a login needs, a clean ext4 image and a
 * work seed; a busybox that is not static is refused with nothing left.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { elfLinking } from "@banger/common/static-busybox";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createHostBusybox } from "../host/busybox.js";
import { createImageBuilder } from "../image-builder.js";
import { buildTiny, tinyEntries, type TinyEvent } from "./tiny.js";

const BUSYBOX = "/bin/busybox";
const haveStaticBusybox = existsSync(BUSYBOX) && elfLinking(readFileSync(BUSYBOX)) === "static";
const haveE2fsprogs = existsSync("/sbin/mkfs.ext4") || existsSync("/usr/sbin/mkfs.ext4");
if (!haveStaticBusybox)
  console.warn("SKIPPING the tiny image build: no static busybox at /bin/busybox (busybox-static)");

let state: string;
let staging: string;
beforeEach(() => {
  state = mkdtempSync(join(tmpdir(), "banger-tiny-"));
  staging = join(state, "images", ".staging", "op-1");
  mkdirSync(staging, { recursive: true });
});
afterEach(() => rmSync(state, { recursive: true, force: true }));

const signal = new AbortController().signal;

describe("tinyEntries", () => {
  it("links each applet to busybox relative to its directory, never an init, and keeps odd lines out", () => {
    const entries = tinyEntries(Buffer.from("bb"), [
      "/bin/ls",
      "/usr/bin/env",
      "/sbin/init",
      "/linuxrc",
      "/bin/busybox",
      "/bin/../etc/x",
      "",
      "/bin/ls",
    ]);
    const links = entries.filter((e) => e.type === "symlink").map((e) => [e.name, e.target]);
    expect(links).toEqual([
      ["var/run", "../run"],
      ["bin/ls", "../bin/busybox"],
      ["usr/bin/env", "../../bin/busybox"],
    ]);
    expect(entries.find((e) => e.name === "etc/passwd")).toMatchObject({ type: "file", mode: 0o644 });
  });
});

describe.skipIf(!haveStaticBusybox || !haveE2fsprogs)("buildTiny", () => {
  it("builds busybox, its applets and /etc into a clean image owned by root, and a work seed", async () => {
    const events: TinyEvent[] = [];
    const result = await buildTiny(
      { createBuilder: () => createImageBuilder(), stateDir: state, busybox: createHostBusybox(BUSYBOX) },
      { stagingDir: staging, minRootfsMib: 64 },
      signal,
      (e) => events.push(e),
    );
    expect(result).toMatchObject({
      rootfsFile: "rootfs.ext4",
      workSeedFile: "work-seed.ext4",
      platform: "linux/amd64",
    });
    expect(result.manifestDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(readdirSync(staging).sort()).toEqual(["rootfs.ext4", "work-seed.ext4"]);
    expect(events.filter((e) => e.done).map((e) => e.stage)).toEqual([
      "layers",
      "mkfs",
      "ownership",
      "work-seed",
      "verify",
    ]);
    const rootfs = join(staging, "rootfs.ext4");
    const stat = (path: string) => {
      const r = spawnSync("debugfs", ["-R", `stat ${path}`, rootfs], { encoding: "utf8" });
      return r.stdout + r.stderr;
    };
    expect(stat("/bin/busybox")).toMatch(/User:\s+0\s+Group:\s+0/);
    expect(stat("/bin/busybox")).toMatch(/Mode:\s+0755/);
    expect(stat("/bin/sh")).toMatch(/Type: symlink[\s\S]*Fast link dest: "\.\.\/bin\/busybox"/);
    expect(stat("/tmp")).toMatch(/Mode:\s+01777/);
    expect(execFileSync("debugfs", ["-R", "cat /etc/passwd", rootfs], { encoding: "utf8" })).toMatch(
      /^root:x:0:0:root:\/root:\/bin\/sh$/m,
    );
    expect(stat("/sbin/init")).toMatch(/File not found/);
    // The same busybox gives the same layer, so the same digest.
    rmSync(staging, { recursive: true });
    mkdirSync(staging);
    const again = await buildTiny(
      { createBuilder: () => createImageBuilder(), stateDir: state, busybox: createHostBusybox(BUSYBOX) },
      { stagingDir: staging, minRootfsMib: 64 },
      signal,
      () => {},
    );
    expect(again.manifestDigest).toBe(result.manifestDigest);
  }, 60_000);

  it("refuses a busybox that is not static, leaving the staging directory empty", async () => {
    await expect(
      buildTiny(
        { createBuilder: () => createImageBuilder(), stateDir: state, busybox: createHostBusybox(process.execPath) },
        { stagingDir: staging, minRootfsMib: 64 },
        signal,
        () => {},
      ),
    ).rejects.toMatchObject({ reason: "BUSYBOX_NOT_STATIC" });
    expect(readdirSync(staging)).toEqual([]);
  });
});
