import { AlreadyExistsError, FailedPreconditionError, NotFoundError } from "@banger/common";
import { beforeEach, describe, expect, it } from "vitest";
import { insertImage } from "./image-repository.js";
import {
  deleteKernel,
  getDefaultKernel,
  getKernel,
  insertKernel,
  listKernelUsers,
  listKernels,
  replaceKernel,
  setDefaultKernel,
} from "./kernel-repository.js";
import { T0, at, expectRefused, image, kernel, rejectionOf, useStore, vm } from "../../test-support/store.js";
import { inTransaction } from "./transaction.js";
import { insertVm } from "./vm-repository.js";

describe("kernel repository", () => {
  const store = useStore();
  const db = () => store().db;
  const defaults = async () => (await listKernels(db())).filter((k) => k.isDefault).map((k) => k.name);

  beforeEach(async () => {
    await insertKernel(db(), kernel({ isDefault: true }));
  });

  it("stores a kernel and reads it back field for field", async () => {
    const plain = kernel({ name: "plain", version: "", uncompressed: false, initrdBytes: 0, hasModules: false });
    expect(await insertKernel(db(), plain)).toEqual(plain);
    expect(await getKernel(db(), "debian-6.1")).toEqual({
      name: "debian-6.1",
      version: "6.1.0-27-amd64",
      kernelSha256: `sha256:${"a".repeat(64)}`,
      kernelBytes: 44_000_000,
      uncompressed: true,
      initrdBytes: 30_000_000,
      hasModules: true,
      isDefault: true,
      createdAt: T0,
    });
    expect((await listKernels(db())).map((k) => k.name)).toEqual(["debian-6.1", "plain"]);
  });

  it("keeps at most one default: setDefaultKernel moves it in one step", async () => {
    await insertKernel(db(), kernel({ name: "next", createdAt: at(1) }));
    expect(await defaults()).toEqual(["debian-6.1"]);
    expect(await setDefaultKernel(db(), "next")).toMatchObject({ name: "next", isDefault: true });
    expect(await defaults()).toEqual(["next"]);
    expect((await getDefaultKernel(db()))?.name).toBe("next");
    // Setting the default twice is harmless.
    await setDefaultKernel(db(), "next");
    expect(await defaults()).toEqual(["next"]);
  });

  it("a kernel inserted as the default takes over from the previous one", async () => {
    await insertKernel(db(), kernel({ name: "newer", isDefault: true }));
    expect(await defaults()).toEqual(["newer"]);
  });

  it("setDefaultKernel joins the caller's transaction", async () => {
    await insertKernel(db(), kernel({ name: "next" }));
    const error = await rejectionOf(
      inTransaction(db(), async (trx) => {
        await setDefaultKernel(trx, "next");
        throw new Error("the caller changed its mind");
      }),
      Error,
    );
    expect(error.message).toBe("the caller changed its mind");
    expect(await defaults()).toEqual(["debian-6.1"]);
  });

  it("the schema itself refuses a second default", async () => {
    await insertKernel(db(), kernel({ name: "next" }));
    await expect(
      db().updateTable("kernels").set({ is_default: 1 }).where("name", "=", "next").execute(),
    ).rejects.toThrow(/UNIQUE constraint failed: kernels.is_default/);
    expect(await defaults()).toEqual(["debian-6.1"]);
  });

  it("deletes an unused kernel; deleting it again is not an error", async () => {
    await insertKernel(db(), kernel({ name: "spare" }));
    expect(await deleteKernel(db(), "spare")).toBe(true);
    expect(await getKernel(db(), "spare")).toBeUndefined();
    expect(await deleteKernel(db(), "spare")).toBe(false);
  });

  it("replaceKernel swaps the row in one step and keeps the default with the name", async () => {
    const newer = kernel({ version: "6.1.0-28-amd64", kernelSha256: `sha256:${"c".repeat(64)}`, createdAt: at(5) });
    const { kernel: stored, replaced } = await replaceKernel(db(), newer);
    expect(stored).toEqual({ ...newer, isDefault: true });
    expect(replaced).toMatchObject({ name: "debian-6.1", version: "6.1.0-27-amd64", isDefault: true });
    expect(await getKernel(db(), "debian-6.1")).toEqual(stored);
    expect(await defaults()).toEqual(["debian-6.1"]);
  });

  it("replaceKernel of a name not yet taken inserts it", async () => {
    const { kernel: stored, replaced } = await replaceKernel(db(), kernel({ name: "fresh", isDefault: true }));
    expect(replaced).toBeUndefined();
    expect(stored).toMatchObject({ name: "fresh", isDefault: true });
    expect(await defaults()).toEqual(["fresh"]);
  });

  describe("refuses, changing nothing", () => {
    it("a second kernel with the same name: KERNEL_NAME_TAKEN", async () => {
      await expectRefused(
        db(),
        () => insertKernel(db(), kernel({ isDefault: false })),
        AlreadyExistsError,
        "KERNEL_NAME_TAKEN",
      );
    });

    it("a second kernel with the same name, as the new default: the old default stays", async () => {
      await expectRefused(
        db(),
        () => insertKernel(db(), kernel({ isDefault: true })),
        AlreadyExistsError,
        "KERNEL_NAME_TAKEN",
      );
      expect(await defaults()).toEqual(["debian-6.1"]);
    });

    it("replacing a kernel an image or VM uses: KERNEL_IN_USE, the old row stays", async () => {
      await insertImage(db(), image());
      await insertVm(db(), vm());
      const error = await expectRefused(
        db(),
        () => replaceKernel(db(), kernel({ version: "6.1.0-28-amd64" })),
        FailedPreconditionError,
        "KERNEL_IN_USE",
      );
      expect(error.message).toBe('kernel "debian-6.1" is used by image debian and VM box');
    });

    it("making a kernel that does not exist the default: KERNEL_NOT_FOUND", async () => {
      await expectRefused(db(), () => setDefaultKernel(db(), "ghost"), NotFoundError, "KERNEL_NOT_FOUND");
    });

    it("deleting a kernel an image names as default: KERNEL_IN_USE", async () => {
      await insertImage(db(), image());
      expect(await listKernelUsers(db(), "debian-6.1")).toEqual({ images: ["debian"], vms: [], snapshots: [] });
      const error = await expectRefused(
        db(),
        () => deleteKernel(db(), "debian-6.1"),
        FailedPreconditionError,
        "KERNEL_IN_USE",
      );
      expect(error.message).toBe('kernel "debian-6.1" is used by image debian');
    });

    it("deleting a kernel a VM boots: KERNEL_IN_USE", async () => {
      await insertKernel(db(), kernel({ name: "vm-only" }));
      await insertImage(db(), image({ defaultKernel: null }));
      await insertVm(db(), vm({ kernelName: "vm-only" }));
      expect(await listKernelUsers(db(), "vm-only")).toEqual({ images: [], vms: ["box"], snapshots: [] });
      const error = await expectRefused(
        db(),
        () => deleteKernel(db(), "vm-only"),
        FailedPreconditionError,
        "KERNEL_IN_USE",
      );
      expect(error.message).toBe('kernel "vm-only" is used by VM box');
    });
  });
});
