/**
 * The guest kit in the kernel catalog: a vmlinux extracted at import, and
 * BuildInitramfs. A fake static busybox (a small ELF) stands in for
 * busybox-static; the initramfs is real, read back entry by entry.
 */
import { createHash } from "node:crypto";
import { mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Writable } from "node:stream";
import { gzipSync } from "node:zlib";
import { FailedPreconditionError, NotFoundError, createLogger } from "@banger/common";
import { requireTools } from "@banger/common/testing";
import { describe, expect, it } from "vitest";
import { KIT_TOOLS, fakeBzImage, fakeElf, readNewc } from "../../test-support/initramfs.js";
import { rejectionOf, useStore, useTempDir } from "../../test-support/store.js";
import { createKernelCatalog, kernelFiles } from "./kernels.js";
import { createOperations } from "./operations.js";

const store = useStore();
const tempDir = useTempDir();
const logger = createLogger({
  service: "orchestrator",
  destination: new Writable({ write: (_c, _e, done) => done() }),
});
const sha256 = (bytes: Buffer) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

const VMLINUX = fakeElf({ body: 8192 });
const VMLINUZ = fakeBzImage(gzipSync(Buffer.concat([VMLINUX, Buffer.from("relocations")])), VMLINUX.length + 11);
const MODULES_DEP = [
  "kernel/drivers/virtio/virtio.ko:",
  "kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko",
  "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko",
  "kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko",
  "kernel/fs/ext4/ext4.ko:",
  "",
].join("\n");

async function put(root: string, files: Record<string, string | Buffer>): Promise<string> {
  for (const [path, content] of Object.entries(files)) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), content);
  }
  return root;
}

/** A distribution kernel package unpacked: a bzImage, its initrd and modules (`dep` as its modules.dep). */
function packageSource(dep = MODULES_DEP): Promise<string> {
  const modules = Object.fromEntries(
    dep
      .split("\n")
      .filter((line) => line.includes(":"))
      .map((line) => line.slice(0, line.indexOf(":")))
      .map((path) => [`lib/modules/6.1.0-9-amd64/${path}`, `${path} bytes`]),
  );
  return put(join(tempDir(), "package"), {
    "boot/vmlinuz-6.1.0-9-amd64": VMLINUZ,
    "boot/initrd.img-6.1.0-9-amd64": "the distribution's initrd",
    "lib/modules/6.1.0-9-amd64/modules.dep": dep,
    ...modules,
  });
}

async function catalog(options: { busybox?: string } = {}) {
  const busybox = await put(join(tempDir(), "host"), { busybox: fakeElf() }).then((dir) => join(dir, "busybox"));
  const operations = createOperations({ db: store().db, logger });
  const kernels = createKernelCatalog({
    db: store().db,
    stateDir: join(tempDir(), "state"),
    operations,
    logger,
    busybox: options.busybox ?? busybox,
  });
  const settle = async (id: string) => {
    await operations.settled();
    return operations.get(id);
  };
  const imported = async (sourceDir: string, name = "debian") => {
    const op = await settle((await kernels.import({ name, sourceDir, setDefault: false, replace: false })).id);
    expect(op.state).toBe("succeeded");
    return kernels.get(name);
  };
  const staging = () => readdir(join(tempDir(), "state", "kernels", ".staging")).catch(() => []);
  return { kernels, settle, imported, staging };
}

describe("kernel import of a bzImage", () => {
  it("stores the vmlinux extracted from it (what Firecracker boots, and QEMU without decompressing)", async () => {
    const { kernels, settle } = await catalog();
    const op = await settle(
      (await kernels.import({ name: "debian", sourceDir: await packageSource(), setDefault: false, replace: false }))
        .id,
    );
    expect(op.stages.map((s) => [s.name, s.state])).toEqual([
      ["inspect", "done"],
      ["copy", "done"],
      ["extract", "done"],
      ["publish", "done"],
    ]);
    const kernel = await kernels.get("debian");
    expect(kernel).toMatchObject({
      uncompressed: true,
      kernelSha256: sha256(VMLINUX),
      kernelBytes: VMLINUX.length,
    });
    const dir = kernels.dir("debian");
    expect((await readdir(dir)).sort()).toEqual(["initrd", "modules", "vmlinux"]);
    expect(await readFile(kernelFiles(dir, kernel).kernel)).toEqual(VMLINUX);
  });
});

describe("BuildInitramfs", () => {
  it.skipIf(requireTools("BuildInitramfs with banger's guest kit", KIT_TOOLS).length > 0)(
    "makes banger's initramfs the kernel's initrd, replacing the package's, and records its size",
    async () => {
      const { kernels, settle, imported, staging } = await catalog();
      await imported(await packageSource());
      const started = await kernels.buildInitramfs("debian");
      expect(started).toMatchObject({ kind: "build-initramfs", target: "debian", state: "running" });
      const op = await settle(started.id);
      expect(op.state).toBe("succeeded");
      expect(op.stages.map((s) => [s.name, s.state])).toEqual([
        ["build", "done"],
        ["publish", "done"],
      ]);

      const kernel = await kernels.get("debian");
      const initrd = await readFile(kernelFiles(kernels.dir("debian"), kernel).initrd ?? "");
      expect(kernel.initrdBytes).toBe(initrd.length);
      expect(op.result).toMatchObject({ kind: "kernel", kernel: { name: "debian", initrdBytes: initrd.length } });
      const entries = new Map(readNewc(initrd).map((e) => [e.name, e.data.toString()]));
      expect(entries.get("lib/modules/banger/order")).toBe("virtio\nvirtio_mmio\nvirtio_blk\nvirtio_net\next4\n");
      expect(entries.get("lib/modules/banger/ext4.ko")).toBe("kernel/fs/ext4/ext4.ko bytes");
      expect(entries.get("init")).toMatch(/^#!\/bin\/busybox sh\n# banger's initramfs \/init/);
      // The guest kit is in it, and said beside it: its VMs have an agent to wait for.
      expect(entries.has("banger/kit/bin/qemu-ga")).toBe(true);
      expect((await readdir(kernels.dir("debian"))).sort()).toEqual([
        "initrd",
        "initrd.kit.json",
        "modules",
        "vmlinux",
      ]);
      expect(kernelFiles(kernels.dir("debian"), kernel).kit).toBe(true);
      expect(await staging()).toEqual([]);
    },
  );

  it("fails the operation at build, naming the missing driver, and keeps the initrd the kernel had", async () => {
    const { kernels, settle, imported, staging } = await catalog();
    const before = await imported(await packageSource(MODULES_DEP.replace(/^kernel\/fs\/ext4.*$/m, "")));
    const op = await settle((await kernels.buildInitramfs("debian")).id);
    expect(op).toMatchObject({
      state: "failed",
      error: { code: "failed_precondition", reason: "KERNEL_MODULE_MISSING", stage: "build" },
    });
    expect(op.error?.message).toContain("ext4");
    expect(await kernels.get("debian")).toEqual(before);
    expect(await readFile(join(kernels.dir("debian"), "initrd"), "utf8")).toBe("the distribution's initrd");
    expect(await staging()).toEqual([]);
  });

  it("is refused before any operation for an unknown kernel, one without modules, or without a static busybox", async () => {
    const { kernels, imported } = await catalog();
    expect(await rejectionOf(kernels.buildInitramfs("nope"), NotFoundError)).toMatchObject({
      reason: "KERNEL_NOT_FOUND",
    });
    await imported(await put(join(tempDir(), "bare"), { "boot/vmlinux-6.12": fakeElf() }), "bare");
    expect(await rejectionOf(kernels.buildInitramfs("bare"), FailedPreconditionError)).toMatchObject({
      reason: "KERNEL_HAS_NO_MODULES",
    });

    const withoutBusybox = await catalog({ busybox: join(tempDir(), "no-such-busybox") });
    await withoutBusybox.imported(await packageSource(), "debian-2");
    expect(await rejectionOf(withoutBusybox.kernels.buildInitramfs("debian-2"), FailedPreconditionError)).toMatchObject(
      { reason: "BUSYBOX_MISSING" },
    );
  });
});

describe("the host's kernel on first use (ensureDefault)", () => {
  // Importing builds banger's initramfs, and so the guest kit from the host's programs.
  const withKit = it.skipIf(
    requireTools("the host's kernel on first use (its initramfs bundles the kit)", KIT_TOOLS).length > 0,
  );
  /** A host root with installed kernels: `versions` each with its vmlinuz and modules (plus one module nothing loads). */
  async function hostRoot(versions: readonly string[], extra: Record<string, string | Buffer> = {}) {
    const files: Record<string, string | Buffer> = { ...extra };
    for (const version of versions) {
      files[`boot/vmlinuz-${version}`] = VMLINUZ;
      files[`boot/initrd.img-${version}`] = "the distribution's initrd";
      files[`lib/modules/${version}/modules.dep`] = `${MODULES_DEP}kernel/sound/snd.ko:\n`;
      files[`lib/modules/${version}/kernel/sound/snd.ko`] = "a module banger's initramfs never loads";
      for (const line of MODULES_DEP.split("\n").filter((l) => l.includes(":"))) {
        const path = line.slice(0, line.indexOf(":"));
        files[`lib/modules/${version}/${path}`] = `${path} bytes`;
      }
    }
    return put(join(tempDir(), "hostroot"), files);
  }

  async function withHost(root: string, release: string) {
    const busybox = await put(join(tempDir(), "host"), { busybox: fakeElf() }).then((dir) => join(dir, "busybox"));
    const operations = createOperations({ db: store().db, logger });
    const kernels = createKernelCatalog({
      db: store().db,
      stateDir: join(tempDir(), "state"),
      operations,
      logger,
      busybox,
      hostRoot: root,
      hostRelease: release,
    });
    return { kernels };
  }
  const op = { id: "op-000000000001", signal: new AbortController().signal };

  withKit(
    "imports the running kernel with only the modules the initramfs loads, makes it the default, builds its initramfs",
    async () => {
      const root = await hostRoot(["6.1.0-9-amd64", "6.1.0-10-amd64"]);
      const { kernels } = await withHost(root, "6.1.0-9-amd64");
      const { kernel, imported } = await kernels.ensureDefault(op);
      expect(kernel).toMatchObject({ name: "host-6.1.0-9-amd64", version: "6.1.0-9-amd64", isDefault: true });
      expect(imported).toBe(
        `no kernel was imported: imported this host's kernel 6.1.0-9-amd64 (${root}/boot/vmlinuz-6.1.0-9-amd64, with ` +
          "the modules banger's initramfs loads) as host-6.1.0-9-amd64, the default kernel, and built banger's initramfs for it",
      );
      const dir = kernels.dir("host-6.1.0-9-amd64");
      expect((await readdir(dir)).sort()).toEqual(["initrd", "initrd.kit.json", "modules", "vmlinux"]);
      expect(await readdir(join(dir, "modules", "kernel"))).not.toContain("sound");
      expect(kernelFiles(dir, await kernels.get("host-6.1.0-9-amd64")).kit).toBe(true);
      // Then it is the default: nothing more is imported.
      const again = await kernels.ensureDefault(op);
      expect([again.kernel.name, again.imported]).toEqual(["host-6.1.0-9-amd64", undefined]);
      expect(await readdir(join(tempDir(), "state", "kernels", ".staging")).catch(() => [])).toEqual([]);
    },
  );

  withKit(
    "takes the newest installed kernel when the running one is not installed (a container, a VM host)",
    async () => {
      const root = await hostRoot(["6.1.0-9-amd64", "6.1.0-10-amd64"], { "boot/vmlinuz-6.2.0-1-amd64": VMLINUZ });
      const { kernels } = await withHost(root, "6.18.4-cloud");
      const [first, second] = await Promise.all([kernels.ensureDefault(op), kernels.ensureDefault(op)]);
      // 6.2.0-1 has no modules installed: 6.1.0-10 is the newest one banger can use. Two creates shared one import.
      expect(first.kernel.name).toBe("host-6.1.0-10-amd64");
      expect(second).toEqual(first);
      expect((await kernels.list()).map((k) => k.name)).toEqual(["host-6.1.0-10-amd64"]);
    },
  );

  it("fails KERNEL_NOT_FOUND, saying what to install, on a host with no kernel it can use", async () => {
    const root = await put(join(tempDir(), "empty"), { "boot/vmlinuz-6.1.0-9-amd64": VMLINUZ });
    const { kernels } = await withHost(root, "6.1.0-9-amd64");
    const error = await rejectionOf(kernels.ensureDefault(op), NotFoundError);
    expect(error).toMatchObject({ reason: "KERNEL_NOT_FOUND" });
    expect(error.message).toContain("apt install linux-image-amd64");
    expect(await kernels.list()).toEqual([]);
  });
});
