import { AlreadyExistsError, FailedPreconditionError, NotFoundError } from "@banger/common";
import { beforeEach, describe, expect, it } from "vitest";
import { T0, expectRefused, image, kernel, useStore } from "../../test-support/store.js";
import { deleteImage, insertImage } from "./image-repository.js";
import { deleteKernel, insertKernel } from "./kernel-repository.js";
import { listSnapshotsUsing } from "./references.js";
import {
  deleteSnapshot,
  getSnapshot,
  insertSnapshot,
  listSnapshots,
  type SnapshotRecord,
} from "./snapshot-repository.js";

const snap = (overrides: Partial<SnapshotRecord> = {}): SnapshotRecord => ({
  name: "s1",
  vmName: "box",
  vmId: "0123456789abcdef",
  imageName: "debian",
  kernelName: "debian-6.1",
  vmm: "firecracker",
  vcpu: 2,
  memoryMib: 1024,
  workDiskMib: 8192,
  rootDiskStrategy: "clone",
  mac: "02:00:00:00:00:01",
  createdAt: T0,
  ...overrides,
});

describe("snapshot repository", () => {
  const store = useStore();
  const db = () => store().db;

  beforeEach(async () => {
    await insertKernel(db(), kernel({ isDefault: true }));
    await insertImage(db(), image());
  });

  it("stores a snapshot and reads it back field for field; delete says whether it existed", async () => {
    await insertSnapshot(db(), snap());
    await insertSnapshot(db(), snap({ name: "a0", rootDiskStrategy: "dm-snapshot", vmm: "qemu-microvm" }));
    expect(await getSnapshot(db(), "s1")).toEqual(snap());
    expect((await listSnapshots(db())).map((s) => s.name)).toEqual(["a0", "s1"]);
    expect(await listSnapshotsUsing(db(), "image_name", "debian")).toEqual(["a0", "s1"]);
    expect(await deleteSnapshot(db(), "s1")).toBe(true);
    expect(await deleteSnapshot(db(), "s1")).toBe(false);
    expect(await getSnapshot(db(), "s1")).toBeUndefined();
  });

  it("refuses a second snapshot of one name: SNAPSHOT_NAME_TAKEN", async () => {
    await insertSnapshot(db(), snap());
    await expectRefused(db(), () => insertSnapshot(db(), snap()), AlreadyExistsError, "SNAPSHOT_NAME_TAKEN");
  });

  it("refuses a snapshot of an image or kernel that does not exist", async () => {
    await expectRefused(
      db(),
      () => insertSnapshot(db(), snap({ imageName: "ghost" })),
      NotFoundError,
      "IMAGE_NOT_FOUND",
    );
    await expectRefused(
      db(),
      () => insertSnapshot(db(), snap({ kernelName: "ghost" })),
      NotFoundError,
      "KERNEL_NOT_FOUND",
    );
  });

  it("holds its image and kernel: deleting either is refused, naming the snapshot", async () => {
    await insertKernel(db(), kernel({ name: "other" }));
    await insertImage(db(), image({ name: "plain", defaultKernel: null }));
    await insertSnapshot(db(), snap({ imageName: "plain", kernelName: "other" }));
    const imageError = await expectRefused(
      db(),
      () => deleteImage(db(), "plain"),
      FailedPreconditionError,
      "IMAGE_IN_USE",
    );
    expect(imageError.message).toBe('image "plain" is used by snapshot s1; delete them first');
    const kernelError = await expectRefused(
      db(),
      () => deleteKernel(db(), "other"),
      FailedPreconditionError,
      "KERNEL_IN_USE",
    );
    expect(kernelError.message).toBe('kernel "other" is used by snapshot s1');
    await deleteSnapshot(db(), "s1");
    expect(await deleteImage(db(), "plain")).toBe(true);
    expect(await deleteKernel(db(), "other")).toBe(true);
  });
});
