import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { mkdir, mkdtemp, open, readFile, readdir, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { gzipSync } from "node:zlib";
import { FailedPreconditionError } from "@banger/common";
import { hasTool, requireTools } from "@banger/common/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  INIT_SCRIPTS_DIR,
  buildInitramfs,
  cpioNewc,
  elfLinking,
  planModules,
  readModuleIndex,
  readStaticBusybox,
  type ModuleIndex,
} from "./initramfs.js";
import { KIT_TOOLS, fakeElf, readNewc } from "../../test-support/initramfs.js";
import { DROPBEAR_REREADS_KEYS, KIT_DIR, dropbearRereadsKeys } from "./kit.js";

// The distribution kernel package the boot proof uses, when the host has one installed.
const hostModules = existsSync("/lib/modules")
  ? readdirSync("/lib/modules").find((v) => existsSync(`/lib/modules/${v}/kernel/fs/ext4`))
  : undefined;
// One line for the tests below that need the host's: each skips on its own.
requireTools("parts of the initramfs built from the host", [
  ...KIT_TOOLS,
  "cpio",
  { what: "a kernel's modules in /lib/modules (linux-image-amd64)", present: hostModules !== undefined },
]);

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "banger-initramfs-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Lines of Debian 6.1's index files for the modules banger loads (trimmed). */
const DEBIAN_INDEX: ModuleIndex = {
  dep: [
    "kernel/drivers/virtio/virtio_ring.ko:",
    "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
    "kernel/net/core/failover.ko:",
    "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko",
    "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
    "kernel/lib/crc16.ko:",
    "kernel/fs/mbcache.ko:",
    "kernel/fs/jbd2/jbd2.ko:",
    "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko",
    "kernel/crypto/crc32c_generic.ko:",
    "kernel/arch/x86/crypto/crc32c-intel.ko:",
    "kernel/drivers/acpi/button.ko:",
    "kernel/drivers/input/evdev.ko:",
    "kernel/net/vmw_vsock/vsock.ko:",
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko",
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko",
    "",
  ].join("\n"),
  builtin: "kernel/net/packet/af_packet.ko\n",
  alias: "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias crc32c crc32c_generic\n",
  softdep: "# Soft dependencies extracted from modules themselves.\nsoftdep ext4 pre: crypto-crc32c\n",
};

describe("the modules of the initramfs", () => {
  it("are the wanted ones and what they need, each once, dependencies first", () => {
    const plan = planModules(DEBIAN_INDEX);
    const order = plan.load.map((m) => m.name);
    expect(order).toEqual([
      "virtio_ring",
      "virtio",
      "virtio_mmio",
      "virtio_blk",
      "failover",
      "net_failover",
      "virtio_net",
      "crc32c_generic",
      "crc32c_intel",
      "jbd2",
      "mbcache",
      "crc16",
      "ext4",
      "vsock",
      "vmw_vsock_virtio_transport_common",
      "vmw_vsock_virtio_transport",
      "virtio_console",
      "virtio_rng",
      "button",
      "evdev",
    ]);
    // Files keep their own spelling ("-"), names are normalised ("_").
    expect(plan.load.find((m) => m.name === "crc32c_intel")).toEqual({
      name: "crc32c_intel",
      file: "crc32c-intel",
      path: "kernel/arch/x86/crypto/crc32c-intel.ko",
    });
    expect(plan.absent).toEqual([]);
  });

  it("loads ext4's soft dependency (crypto-crc32c, through modules.alias) before ext4", () => {
    const plan = planModules(DEBIAN_INDEX, [{ name: "ext4", required: true, purpose: "test" }]);
    // Every module that provides the alias, in modules.alias order.
    expect(plan.load.map((m) => m.name)).toEqual([
      "jbd2",
      "mbcache",
      "crc16",
      "crc32c_intel",
      "crc32c_generic",
      "ext4",
    ]);
  });

  it("skips what the kernel has built in, and optional modules it lacks", () => {
    const index = {
      ...DEBIAN_INDEX,
      dep: DEBIAN_INDEX.dep
        .split("\n")
        .filter((l) => !/virtio_mmio|vsock|evdev|virtio_console/.test(l))
        .join("\n"),
      builtin: "kernel/drivers/virtio/virtio_mmio.ko\n",
    };
    const plan = planModules(index);
    expect(plan.builtin).toEqual(["virtio_mmio"]);
    expect(plan.absent).toEqual(["vmw_vsock_virtio_transport", "virtio_console", "evdev"]);
    expect(plan.load.map((m) => m.name)).not.toContain("virtio_mmio");
  });

  it("refuses a kernel that lacks a driver the guest needs, naming it", () => {
    const index = { ...DEBIAN_INDEX, dep: DEBIAN_INDEX.dep.replace(/^kernel\/fs\/ext4\/ext4\.ko:.*$/m, "") };
    const error = (() => {
      try {
        return planModules(index);
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(FailedPreconditionError);
    expect(error).toMatchObject({
      reason: "KERNEL_MODULE_MISSING",
      message: expect.stringContaining("ext4") as unknown,
    });
  });

  it("says how to fix a modules tree without modules.dep", async () => {
    await expect(readModuleIndex(dir)).rejects.toMatchObject({
      reason: "KERNEL_MODULES_INCOMPLETE",
      message: expect.stringContaining("depmod") as unknown,
    });
  });

  it.skipIf(hostModules === undefined)("are found in the host's Debian kernel package", async () => {
    const plan = planModules(await readModuleIndex(`/lib/modules/${hostModules}`));
    expect(plan.load.map((m) => m.name)).toEqual(expect.arrayContaining(["virtio_mmio", "virtio_blk", "ext4"]));
  });
});

describe("the busybox of the initramfs", () => {
  it("must be a statically linked ELF", async () => {
    await writeFile(join(dir, "static"), fakeElf());
    await writeFile(join(dir, "dynamic"), fakeElf({ dynamic: true }));
    expect(await readStaticBusybox(join(dir, "static"))).toEqual(fakeElf());
    await expect(readStaticBusybox(join(dir, "dynamic"))).rejects.toMatchObject({
      reason: "BUSYBOX_NOT_STATIC",
      message: expect.stringContaining("busybox-static") as unknown,
    });
    await expect(readStaticBusybox(join(dir, "missing"))).rejects.toMatchObject({
      reason: "BUSYBOX_MISSING",
      message: expect.stringContaining("apt install busybox-static") as unknown,
    });
    // node itself is dynamically linked (its program headers are in its first page).
    const node = await open(process.execPath, "r");
    const { buffer } = await node.read(Buffer.alloc(4096), 0, 4096, 0).finally(() => node.close());
    expect(elfLinking(buffer)).toBe("dynamic");
    expect(elfLinking(Buffer.from("#!/bin/sh\n"))).toBe("not-elf");
  });
});

describe("the cpio archive", () => {
  const entries = [
    { kind: "directory", name: "bin", mode: 0o755 },
    { kind: "file", name: "bin/busybox", mode: 0o755, data: Buffer.from("odd length") },
    { kind: "symlink", name: "bin/sh", target: "busybox" },
    { kind: "char-device", name: "dev/console", mode: 0o600, major: 5, minor: 1 },
    { kind: "file", name: "empty", mode: 0o644, data: Buffer.alloc(0) },
  ] as const;

  it("is newc with every entry owned by root, mtime 0, data padded to 4 bytes", () => {
    const archive = Buffer.concat([...cpioNewc(entries)]);
    expect(archive.length % 4).toBe(0);
    const read = readNewc(archive);
    expect(read.map((e) => [e.name, e.mode.toString(8), e.uid, e.gid, e.mtime])).toEqual([
      ["bin", "40755", 0, 0, 0],
      ["bin/busybox", "100755", 0, 0, 0],
      ["bin/sh", "120777", 0, 0, 0],
      ["dev/console", "20600", 0, 0, 0],
      ["empty", "100644", 0, 0, 0],
    ]);
    expect(read[1]?.data.toString()).toBe("odd length");
    expect(read[2]?.data.toString()).toBe("busybox");
    expect([read[3]?.rdevMajor, read[3]?.rdevMinor]).toEqual([5, 1]);
  });

  it.skipIf(!hasTool("cpio"))("reads back with GNU cpio", () => {
    const archive = Buffer.concat([...cpioNewc(entries)]);
    const names = execFileSync("cpio", ["-it", "--quiet"], { input: archive }).toString().trim().split("\n");
    expect(names).toEqual(["bin", "bin/busybox", "bin/sh", "dev/console", "empty"]);
    const long = execFileSync("cpio", ["-itv", "--quiet"], { input: archive })
      .toString()
      .trim()
      .split("\n")
      .map((line) => line.split(/\s+/).slice(0, 4));
    expect(long).toEqual([
      ["drwxr-xr-x", "2", "root", "root"],
      ["-rwxr-xr-x", "1", "root", "root"],
      ["lrwxrwxrwx", "1", "root", "root"],
      ["crw-------", "1", "root", "root"],
      ["-rw-r--r--", "1", "root", "root"],
    ]);
  });

  it("refuses names that are absolute or climb out", () => {
    for (const name of ["/init", "../x", "a/../../b", ""]) {
      expect(() => [...cpioNewc([{ kind: "directory", name, mode: 0o755 }])]).toThrow(/relative and normalised/);
    }
  });
});

describe("building the initramfs", () => {
  /** A modules tree like a distribution's, with modules stored plain, gzip'd, xz'd and zstd'd. */
  async function modulesTree(): Promise<string> {
    const root = join(dir, "modules");
    const files: Record<string, Buffer | string> = {
      "modules.dep": [
        "kernel/drivers/virtio/virtio.ko:",
        "kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/block/virtio_blk.ko.gz: kernel/drivers/virtio/virtio.ko",
        `kernel/drivers/net/virtio_net.ko${hasTool("zstd") ? ".zst" : ""}: kernel/drivers/virtio/virtio.ko`,
        `kernel/fs/ext4/ext4.ko${hasTool("xz") ? ".xz" : ""}:`,
        "",
      ].join("\n"),
      "modules.builtin": "",
      "kernel/drivers/virtio/virtio.ko": "virtio module",
      "kernel/drivers/virtio/virtio_mmio.ko": "virtio_mmio module",
      "kernel/drivers/block/virtio_blk.ko.gz": gzipSync("virtio_blk module"),
    };
    files[hasTool("zstd") ? "kernel/drivers/net/virtio_net.ko.zst" : "kernel/drivers/net/virtio_net.ko"] = hasTool(
      "zstd",
    )
      ? execFileSync("zstd", ["-c", "-q"], { input: "virtio_net module" })
      : "virtio_net module";
    files[hasTool("xz") ? "kernel/fs/ext4/ext4.ko.xz" : "kernel/fs/ext4/ext4.ko"] = hasTool("xz")
      ? execFileSync("xz", ["-c", "--check=crc32"], { input: "ext4 module" })
      : "ext4 module";
    for (const [path, content] of Object.entries(files)) {
      await mkdir(dirname(join(root, path)), { recursive: true });
      await writeFile(join(root, path), content);
    }
    return root;
  }

  it.skipIf(!KIT_TOOLS.every(hasTool))(
    "holds banger's init, the busybox, the modules uncompressed and their order, all owned by root",
    async () => {
      await writeFile(join(dir, "busybox"), fakeElf());
      const output = join(dir, "initrd");
      await writeFile(output, "the old initrd");
      const summary = await buildInitramfs({
        modulesDir: await modulesTree(),
        output,
        busybox: join(dir, "busybox"),
      });
      expect(summary.modules).toEqual(["virtio", "virtio_mmio", "virtio_blk", "virtio_net", "ext4"]);
      expect(summary.absent).toContain("vmw_vsock_virtio_transport");

      const archive = await readFile(output);
      expect(summary.bytes).toBe(archive.length);
      const entries = new Map(readNewc(archive).map((e) => [e.name, e]));
      const text = (name: string) => entries.get(name)?.data.toString();
      expect(text("init")).toBe(await readFile(join(INIT_SCRIPTS_DIR, "init.sh"), "utf8"));
      expect(entries.get("init")?.mode.toString(8)).toBe("100755");
      expect(text("banger/minimal-init")).toBe(await readFile(join(INIT_SCRIPTS_DIR, "minimal-init.sh"), "utf8"));
      expect(entries.get("bin/busybox")?.data).toEqual(fakeElf());
      expect(text("bin/sh")).toBe("busybox");
      expect(text("lib/modules/banger/order")).toBe("virtio\nvirtio_mmio\nvirtio_blk\nvirtio_net\next4\n");
      for (const module of ["virtio", "virtio_mmio", "virtio_blk", "virtio_net", "ext4"]) {
        expect(text(`lib/modules/banger/${module}.ko`)).toBe(`${module} module`);
      }
      expect([...entries.values()].every((e) => e.uid === 0 && e.gid === 0)).toBe(true);
      expect(entries.get("dev/console")).toMatchObject({ rdevMajor: 5, rdevMinor: 1 });
      // banger's guest kit: the host's dropbear and qemu-ga, their libraries and loader, run from /run/banger/kit.
      expect(summary.kit.programs).toEqual(["dropbear", "dropbearkey", "qemu-ga"]);
      expect(summary.kit.libraries).toEqual(expect.arrayContaining(["libc.so.6", "ld-linux-x86-64.so.2"]));
      for (const program of summary.kit.programs) {
        const elf = entries.get(`banger/kit/bin/${program}`)?.data ?? Buffer.alloc(0);
        expect(elf.includes(Buffer.from(`${KIT_DIR}/lib/ld-linux-x86-64.so.2\0`))).toBe(true);
        expect(elf.includes(Buffer.from(`${KIT_DIR}/lib\0`))).toBe(true);
      }
      for (const library of summary.kit.libraries) expect(entries.has(`banger/kit/lib/${library}`)).toBe(true);
      // The mark a fork's identity looks for: there when the host's dropbear reads its key per connection.
      const rereads = dropbearRereadsKeys(await readFile("/usr/sbin/dropbear"));
      expect(summary.kit.dropbearRereadsHostKeys).toBe(rereads);
      expect(entries.has(`banger/kit/${DROPBEAR_REREADS_KEYS}`)).toBe(rereads);
      expect(text("banger/kit/start")).toBe(await readFile(join(INIT_SCRIPTS_DIR, "kit-start.sh"), "utf8"));
      expect(text("banger/kit/poweroff")).toBe(await readFile(join(INIT_SCRIPTS_DIR, "kit-poweroff.sh"), "utf8"));
      // Written beside the output, then renamed over it: nothing else is left.
      expect(await readdir(dir)).toEqual(expect.not.arrayContaining([expect.stringMatching(/^\.initrd\./)]));
    },
  );

  it("is the same archive, byte for byte, when built twice from the same inputs", async () => {
    await writeFile(join(dir, "busybox"), fakeElf());
    const modulesDir = await modulesTree();
    await buildInitramfs({ modulesDir, output: join(dir, "a"), busybox: join(dir, "busybox"), kit: "none" });
    await buildInitramfs({ modulesDir, output: join(dir, "b"), busybox: join(dir, "busybox"), kit: "none" });
    expect(await readFile(join(dir, "a"))).toEqual(await readFile(join(dir, "b")));
  });

  it("fails before writing anything when busybox is missing", async () => {
    const output = join(dir, "initrd");
    await expect(
      buildInitramfs({ modulesDir: await modulesTree(), output, busybox: join(dir, "no-busybox"), kit: "none" }),
    ).rejects.toMatchObject({ reason: "BUSYBOX_MISSING" });
    expect(existsSync(output)).toBe(false);
  });

  it("leaves no partial file when cancelled", async () => {
    await writeFile(join(dir, "busybox"), fakeElf({ body: 4 << 20 }));
    const controller = new AbortController();
    controller.abort(new Error("cancelled by the test"));
    await expect(
      buildInitramfs({
        modulesDir: await modulesTree(),
        output: join(dir, "initrd"),
        busybox: join(dir, "busybox"),
        kit: "none",
        signal: controller.signal,
      }),
    ).rejects.toThrow();
    expect((await readdir(dir)).sort()).toEqual(["busybox", "modules"]);
  });
});

describe("banger's init scripts", () => {
  it("find an image's init as the guest will see it: links followed inside the root disk", async () => {
    const script = await readFile(join(INIT_SCRIPTS_DIR, "init.sh"), "utf8");
    const resolve = /^resolve_in_root\(\) \{[\s\S]*?^\}$/m.exec(script)?.[0];
    expect(resolve).toBeDefined();
    const root = join(dir, "root");
    await mkdir(join(root, "usr/sbin"), { recursive: true });
    await mkdir(join(root, "usr/lib/systemd"), { recursive: true });
    await mkdir(join(root, "bin"), { recursive: true });
    await writeFile(join(root, "usr/lib/systemd/systemd"), "");
    // Merged /usr (Debian 12): /sbin is a relative link; init an absolute one, meant inside the root disk.
    await symlink("usr/sbin", join(root, "sbin"));
    await symlink("/usr/lib/systemd/systemd", join(root, "usr/sbin/init"));
    await symlink("../usr/lib/systemd/./systemd", join(root, "bin/relative"));
    await symlink("/nowhere", join(root, "bin/dangling"));
    await symlink("loop-b", join(root, "bin/loop-a"));
    await symlink("loop-a", join(root, "bin/loop-b"));
    const inRoot = (path: string) =>
      spawnSync(
        "/bin/sh",
        ["-c", `${(resolve ?? "").replaceAll("/newroot", root)}\nresolve_in_root "$1"`, "sh", path],
        {
          encoding: "utf8",
        },
      );
    expect(inRoot("/sbin/init")).toMatchObject({ status: 0, stdout: "/usr/lib/systemd/systemd\n" });
    expect(inRoot("/bin/relative")).toMatchObject({ status: 0, stdout: "/usr/lib/systemd/systemd\n" });
    expect(inRoot("/bin/../sbin/init")).toMatchObject({ status: 0, stdout: "/usr/lib/systemd/systemd\n" });
    // The host's /nowhere does not count, nor does a loop.
    expect(inRoot("/bin/dangling")).toMatchObject({ status: 1, stdout: "" });
    expect(inRoot("/bin/loop-a")).toMatchObject({ status: 1, stdout: "" });
    expect(inRoot("/sbin/missing")).toMatchObject({ status: 1, stdout: "" });
  });

  const shell = ["/bin/busybox", "/bin/dash", "/bin/sh"].find((s) => existsSync(s));
  it.skipIf(shell === undefined)("parse as POSIX shell", () => {
    for (const script of ["init.sh", "minimal-init.sh", "kit-start.sh", "kit-poweroff.sh"]) {
      const args = shell === "/bin/busybox" ? ["sh", "-n"] : ["-n"];
      const result = spawnSync(shell ?? "", [...args, join(INIT_SCRIPTS_DIR, script)], { encoding: "utf8" });
      expect({ script, status: result.status, stderr: result.stderr }).toEqual({ script, status: 0, stderr: "" });
    }
  });
});
