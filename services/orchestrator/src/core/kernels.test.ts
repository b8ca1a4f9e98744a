import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, readdir, readlink, symlink, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { Writable } from "node:stream";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  createLogger,
} from "@banger/common";
import { describe, expect, it } from "vitest";
import { getKernel, insertImage, insertVm, type OperationRecord } from "../store/index.js";
import { image, rejectionOf, useStore, useTempDir, vm } from "../../test-support/store.js";
import { compareVersions, createKernelCatalog, kernelFiles, type ImportKernelRequest } from "./kernels.js";
import { createOperations } from "./operations.js";

const store = useStore();
const tempDir = useTempDir();
const logger = createLogger({
  service: "orchestrator",
  destination: new Writable({ write: (_c, _e, done) => done() }),
});

const ELF = Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]), Buffer.alloc(64, 7)]);
/** A bzImage starts with an MZ stub and has "HdrS" at 0x202. */
const BZIMAGE = (() => {
  const bytes = Buffer.alloc(0x400, 1);
  bytes.write("MZ", 0, "latin1");
  bytes.write("HdrS", 0x202, "latin1");
  return bytes;
})();

const stateDir = () => join(tempDir(), "state");
const kernelsDir = () => join(stateDir(), "kernels");

async function put(root: string, files: Record<string, string | Buffer>): Promise<string> {
  for (const [path, content] of Object.entries(files)) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), content);
  }
  return root;
}

/** A directory described by metadata.json: vmlinux (ELF), an initrd and a modules tree in odd places. */
function metadataSource(overrides: Record<string, unknown> = {}): Promise<string> {
  return put(join(tempDir(), "custom"), {
    "out/vmlinux": ELF,
    "out/initrd.cpio.gz": "initrd-bytes",
    "out/mods/6.6.0-custom/kernel/drivers/virtio_blk.ko": "ko",
    "metadata.json": JSON.stringify({
      kernel: "out/vmlinux",
      initrd: "out/initrd.cpio.gz",
      modules: "out/mods/6.6.0-custom",
      version: "6.6.0-custom",
      ...overrides,
    }),
  });
}

/** A Debian linux-image package unpacked: two kernel versions, the newer one wins. */
async function debianSource(name = "debian"): Promise<string> {
  const root = await put(join(tempDir(), name), {
    "boot/vmlinuz-6.1.0-27-amd64": BZIMAGE,
    "boot/initrd.img-6.1.0-27-amd64": "initrd-6.1",
    "boot/config-6.1.0-27-amd64": "CONFIG_VIRTIO=y",
    "boot/System.map-6.1.0-27-amd64": "map",
    "boot/vmlinuz-5.10.0-30-amd64": BZIMAGE,
    "boot/initrd.img-5.10.0-30-amd64": "initrd-5.10",
    "lib/modules/6.1.0-27-amd64/kernel/drivers/block/virtio_blk.ko": "virtio_blk",
    "lib/modules/6.1.0-27-amd64/modules.dep": "kernel/drivers/block/virtio_blk.ko:\n",
    "lib/modules/5.10.0-30-amd64/modules.dep": "",
  });
  // Dangling on purpose, as in the package: copied as it is.
  await symlink("/usr/src/linux-headers-6.1.0-27-amd64", join(root, "lib/modules/6.1.0-27-amd64/build"));
  return root;
}

function catalog() {
  const operations = createOperations({ db: store().db, logger });
  const kernels = createKernelCatalog({ db: store().db, stateDir: stateDir(), operations, logger });
  /** Starts an import and waits for its operation to end. */
  const importKernel = async (req: Partial<ImportKernelRequest> & { sourceDir: string }): Promise<OperationRecord> => {
    const op = await kernels.import({ name: "k", setDefault: false, replace: false, ...req });
    await operations.settled();
    return operations.get(op.id);
  };
  return { operations, kernels, importKernel };
}

const sha256 = (bytes: Buffer) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
const staged = () => readdir(join(kernelsDir(), ".staging")).catch(() => []);

describe("kernel import", () => {
  it("from metadata.json: copies kernel, initrd and modules into the catalog and records them", async () => {
    const { kernels, importKernel } = catalog();
    const op = await importKernel({ name: "custom-6.6", sourceDir: await metadataSource() });
    expect(op.state).toBe("succeeded");
    expect(op.kind).toBe("import-kernel");
    expect(op.target).toBe("custom-6.6");
    expect(op.stages.map((s) => [s.name, s.state])).toEqual([
      ["inspect", "done"],
      ["copy", "done"],
      ["publish", "done"],
    ]);
    const expected = {
      name: "custom-6.6",
      version: "6.6.0-custom",
      kernelSha256: sha256(ELF),
      kernelBytes: ELF.length,
      uncompressed: true,
      initrdBytes: "initrd-bytes".length,
      hasModules: true,
      // The first kernel imported becomes the default.
      isDefault: true,
      usedBy: [],
    };
    expect(await kernels.get("custom-6.6")).toMatchObject(expected);
    expect(op.result).toMatchObject({
      kind: "kernel",
      kernel: { ...expected, kernelBytes: ELF.length, initrdBytes: 12 },
    });

    const dir = kernels.dir("custom-6.6");
    expect((await readdir(dir)).sort()).toEqual(["initrd", "modules", "vmlinux"]);
    const files = kernelFiles(dir, await kernels.get("custom-6.6"));
    expect(await readFile(files.kernel)).toEqual(ELF);
    expect(await readFile(files.initrd ?? "", "utf8")).toBe("initrd-bytes");
    expect(await readFile(join(files.modules ?? "", "kernel/drivers/virtio_blk.ko"), "utf8")).toBe("ko");
    expect(await staged()).toEqual([]);
  });

  it("from a distribution layout: the newest vmlinuz, its initrd and modules; version from the file name", async () => {
    const { kernels, importKernel } = catalog();
    const op = await importKernel({ name: "debian-6.1", sourceDir: await debianSource() });
    expect(op.state).toBe("succeeded");
    expect(await kernels.get("debian-6.1")).toMatchObject({
      version: "6.1.0-27-amd64",
      kernelSha256: sha256(BZIMAGE),
      kernelBytes: BZIMAGE.length,
      // A bzImage is recorded as compressed; extracting a vmlinux is not done here.
      uncompressed: false,
      initrdBytes: "initrd-6.1".length,
      hasModules: true,
    });
    const dir = kernels.dir("debian-6.1");
    expect((await readdir(dir)).sort()).toEqual(["initrd", "modules", "vmlinuz"]);
    expect(await readFile(join(dir, "initrd"), "utf8")).toBe("initrd-6.1");
    expect((await readdir(join(dir, "modules"))).sort()).toEqual(["build", "kernel", "modules.dep"]);
    expect(await readlink(join(dir, "modules", "build"))).toBe("/usr/src/linux-headers-6.1.0-27-amd64");
  });

  it("without an initrd or modules, records none", async () => {
    const { kernels, importKernel } = catalog();
    const source = await put(join(tempDir(), "bare"), { "boot/vmlinux-6.12.1": ELF });
    expect((await importKernel({ name: "bare", sourceDir: source })).state).toBe("succeeded");
    expect(await kernels.get("bare")).toMatchObject({
      version: "6.12.1",
      uncompressed: true,
      initrdBytes: 0,
      hasModules: false,
    });
    expect(await readdir(kernels.dir("bare"))).toEqual(["vmlinux"]);
  });

  it("keeps the first kernel the default unless asked; set_default and SetDefaultKernel move it", async () => {
    const { kernels, importKernel } = catalog();
    await importKernel({ name: "first", sourceDir: await debianSource() });
    await importKernel({ name: "second", sourceDir: await metadataSource() });
    const defaults = async () => (await kernels.list()).filter((k) => k.isDefault).map((k) => k.name);
    expect(await defaults()).toEqual(["first"]);
    await importKernel({ name: "third", sourceDir: await metadataSource(), setDefault: true });
    expect(await defaults()).toEqual(["third"]);
    expect(await kernels.setDefault("second")).toMatchObject({ name: "second", isDefault: true });
    expect(await defaults()).toEqual(["second"]);
    expect((await kernels.list()).map((k) => k.name)).toEqual(["first", "second", "third"]);
  });

  it("refuses at once, with no operation: a bad name, a relative or missing path, a file, a taken name", async () => {
    const { operations, kernels, importKernel } = catalog();
    const source = await debianSource();
    await importKernel({ name: "taken", sourceDir: source });
    const before = await operations.list({ limit: 10 });
    const refused = async (req: Partial<ImportKernelRequest>) =>
      rejectionOf(kernels.import({ name: "k", sourceDir: source, setDefault: false, replace: false, ...req }), Error);

    expect(await refused({ name: "Bad/Name" })).toMatchObject({ reason: "INVALID_KERNEL_NAME" });
    expect(await refused({ name: ".hidden" })).toMatchObject({ reason: "INVALID_KERNEL_NAME" });
    expect(await refused({ sourceDir: "relative/dir" })).toBeInstanceOf(InvalidArgumentError);
    expect(await refused({ sourceDir: "relative/dir" })).toMatchObject({ reason: "INVALID_PATH" });
    expect(await refused({ sourceDir: join(tempDir(), "missing") })).toBeInstanceOf(NotFoundError);
    expect(await refused({ sourceDir: join(tempDir(), "missing") })).toMatchObject({ reason: "PATH_NOT_FOUND" });
    expect(await refused({ sourceDir: join(source, "boot", "config-6.1.0-27-amd64") })).toMatchObject({
      reason: "INVALID_PATH",
    });
    const taken = await refused({ name: "taken" });
    expect(taken).toBeInstanceOf(AlreadyExistsError);
    expect(taken).toMatchObject({ reason: "KERNEL_NAME_TAKEN" });

    expect(await operations.list({ limit: 10 })).toEqual(before);
  });

  it("replace: the new files and row take the name's place, and it stays the default", async () => {
    const { kernels, importKernel } = catalog();
    await importKernel({ name: "k", sourceDir: await debianSource() });
    const bare = await put(join(tempDir(), "bare"), { "boot/vmlinux-6.12.1": ELF });
    const op = await importKernel({ name: "k", sourceDir: bare, replace: true });
    expect(op.state).toBe("succeeded");
    expect(await kernels.get("k")).toMatchObject({
      version: "6.12.1",
      kernelSha256: sha256(ELF),
      uncompressed: true,
      initrdBytes: 0,
      hasModules: false,
      isDefault: true,
    });
    expect(await readdir(kernels.dir("k"))).toEqual(["vmlinux"]);
    expect(await staged()).toEqual([]);
  });

  it("a kernel in use cannot be replaced or deleted; the refusal names the images and VMs", async () => {
    const { operations, kernels, importKernel } = catalog();
    await importKernel({ name: "debian-6.1", sourceDir: await debianSource() });
    await insertImage(store().db, image({ defaultKernel: "debian-6.1" }));
    await insertVm(store().db, vm({ kernelName: "debian-6.1" }));
    expect((await kernels.get("debian-6.1")).usedBy).toEqual(["image:debian", "vm:box"]);
    const opsBefore = await operations.list({ limit: 10 });

    const replace = await rejectionOf(
      kernels.import({ name: "debian-6.1", sourceDir: await metadataSource(), setDefault: false, replace: true }),
      FailedPreconditionError,
    );
    expect(replace.reason).toBe("KERNEL_IN_USE");
    expect(replace.message).toContain("image debian and VM box");
    expect(await operations.list({ limit: 10 })).toEqual(opsBefore);

    const deletion = await rejectionOf(kernels.delete("debian-6.1"), FailedPreconditionError);
    expect(deletion.reason).toBe("KERNEL_IN_USE");
    expect(deletion.message).toBe('kernel "debian-6.1" is used by image debian and VM box');
    expect(await kernels.get("debian-6.1")).toMatchObject({ version: "6.1.0-27-amd64" });
    expect((await readdir(kernels.dir("debian-6.1"))).sort()).toEqual(["initrd", "modules", "vmlinuz"]);
  });

  it("deletes the row and the files; deleting again succeeds with existed = false", async () => {
    const { kernels, importKernel } = catalog();
    await importKernel({ name: "gone", sourceDir: await debianSource() });
    expect(await kernels.delete("gone")).toEqual({ existed: true });
    expect(await getKernel(store().db, "gone")).toBeUndefined();
    expect(existsSync(kernels.dir("gone"))).toBe(false);
    expect(await staged()).toEqual([]);
    expect(await kernels.delete("gone")).toEqual({ existed: false });
    await expect(kernels.get("gone")).rejects.toMatchObject({ reason: "KERNEL_NOT_FOUND" });
    await expect(kernels.setDefault("gone")).rejects.toMatchObject({ reason: "KERNEL_NOT_FOUND" });
    await expect(kernels.delete("../etc")).rejects.toMatchObject({ reason: "INVALID_KERNEL_NAME" });
  });

  describe("fails the operation, leaving no kernel, row or staging directory", () => {
    async function expectNothingLeft(name: string): Promise<void> {
      expect(await getKernel(store().db, name)).toBeUndefined();
      expect(existsSync(join(kernelsDir(), name))).toBe(false);
      expect(await staged()).toEqual([]);
    }

    it.each([
      ["a path out of the directory", { kernel: "../outside/vmlinux" }],
      ["an absolute path", { kernel: "/etc/hostname" }],
      ["a modules path out of the directory", { modules: "out/../../outside" }],
      ["a symbolic link out of the directory", { kernel: "escape" }],
      ["a missing file", { initrd: "out/nothing" }],
      ["a directory as the kernel", { kernel: "out/mods" }],
      ["a version that is not one", { version: "6.1; rm -rf /" }],
      ["a kernel that is not a string", { kernel: 42 }],
    ])("hostile or broken metadata.json, %s: INVALID_METADATA", async (_what, metadata) => {
      const { importKernel } = catalog();
      await put(join(tempDir(), "outside"), { vmlinux: ELF });
      const source = await metadataSource(metadata);
      await symlink(join(tempDir(), "outside", "vmlinux"), join(source, "escape"));
      const op = await importKernel({ name: "hostile", sourceDir: source });
      expect(op).toMatchObject({
        state: "failed",
        error: { code: "invalid_argument", reason: "INVALID_METADATA", stage: "inspect" },
      });
      await expectNothingLeft("hostile");
    });

    it("metadata.json that is not JSON: INVALID_METADATA", async () => {
      const { importKernel } = catalog();
      const source = await put(join(tempDir(), "broken"), { "metadata.json": "{ kernel: vmlinux" });
      expect((await importKernel({ name: "broken", sourceDir: source })).error).toMatchObject({
        reason: "INVALID_METADATA",
      });
      await expectNothingLeft("broken");
    });

    it("a directory with no kernel: NO_KERNEL_FOUND", async () => {
      const { importKernel } = catalog();
      const source = await put(join(tempDir(), "empty"), { "boot/config-6.1.0": "", README: "" });
      expect((await importKernel({ name: "none", sourceDir: source })).error).toMatchObject({
        code: "invalid_argument",
        reason: "NO_KERNEL_FOUND",
        stage: "inspect",
      });
      await expectNothingLeft("none");
    });

    it("a copy that fails half-way (a socket in the modules tree) removes what it staged", async () => {
      const { importKernel } = catalog();
      const source = await debianSource();
      const server = createServer();
      await new Promise<void>((done) =>
        server.listen(join(source, "lib/modules/6.1.0-27-amd64/kernel/s.sock"), () => done()),
      );
      try {
        const op = await importKernel({ name: "half", sourceDir: source });
        expect(op).toMatchObject({ state: "failed", error: { stage: "copy" } });
      } finally {
        await new Promise((done) => server.close(done));
      }
      await expectNothingLeft("half");
    });

    it("a failed replace leaves the old kernel as it was", async () => {
      const { kernels, importKernel } = catalog();
      await importKernel({ name: "k", sourceDir: await debianSource() });
      const op = await importKernel({ name: "k", sourceDir: await metadataSource({ kernel: "../x" }), replace: true });
      expect(op.state).toBe("failed");
      expect(await kernels.get("k")).toMatchObject({ version: "6.1.0-27-amd64", isDefault: true });
      expect((await readdir(kernels.dir("k"))).sort()).toEqual(["initrd", "modules", "vmlinuz"]);
      expect(await staged()).toEqual([]);
    });
  });
});

describe("compareVersions", () => {
  it("orders kernel releases numerically", () => {
    const sorted = ["6.10.0", "6.1.0-27-amd64", "5.10.0-30-amd64", "6.9.12", "6.1.0-3-amd64"].sort(compareVersions);
    expect(sorted).toEqual(["5.10.0-30-amd64", "6.1.0-3-amd64", "6.1.0-27-amd64", "6.9.12", "6.10.0"]);
  });
});
