import { AlreadyExistsError, FailedPreconditionError, NotFoundError } from "@banger/common";
import { beforeEach, describe, expect, it } from "vitest";
import { deleteImage, getImage, insertImage, listImageUsers, listImages } from "./image-repository.js";
import { insertKernel } from "./kernel-repository.js";
import { T0, expectRefused, image, kernel, useStore, vm } from "../../test-support/store.js";
import { deleteVm, insertVm } from "./vm-repository.js";

describe("image repository", () => {
  const store = useStore();
  const db = () => store().db;

  beforeEach(async () => {
    await insertKernel(db(), kernel());
    await insertImage(db(), image());
  });

  it("stores an image and reads it back field for field", async () => {
    expect(await getImage(db(), "debian")).toEqual({
      name: "debian",
      reference: "docker.io/library/debian:bookworm",
      manifestDigest: `sha256:${"b".repeat(64)}`,
      platform: "linux/amd64",
      rootfsBytes: 1_073_741_824,
      workSeedBytes: 4_194_304,
      defaultKernel: "debian-6.1",
      source: "pulled",
      config: { entrypoint: [], cmd: ["bash"], env: ["PATH=/usr/bin:/bin"], user: "", workingDir: "" },
      createdAt: T0,
    });
    expect(await getImage(db(), "nope")).toBeUndefined();
  });

  it("keeps a registered image with no reference, digest or default kernel", async () => {
    const local = image({
      name: "local",
      reference: null,
      manifestDigest: null,
      defaultKernel: null,
      source: "registered",
    });
    expect(await insertImage(db(), local)).toEqual(local);
    expect((await listImages(db())).map((i) => i.name)).toEqual(["debian", "local"]);
  });

  it("deletes an image once no VM uses it; deleting it again is not an error", async () => {
    await insertVm(db(), vm());
    expect(await listImageUsers(db(), "debian")).toEqual(["box"]);
    await deleteVm(db(), "box");
    expect(await listImageUsers(db(), "debian")).toEqual([]);
    expect(await deleteImage(db(), "debian")).toBe(true);
    expect(await getImage(db(), "debian")).toBeUndefined();
    expect(await deleteImage(db(), "debian")).toBe(false);
  });

  describe("refuses, changing nothing", () => {
    it("a second image with the same name: IMAGE_NAME_TAKEN", async () => {
      await expectRefused(
        db(),
        () => insertImage(db(), image({ reference: "debian:trixie" })),
        AlreadyExistsError,
        "IMAGE_NAME_TAKEN",
      );
    });

    it("a default kernel that does not exist: KERNEL_NOT_FOUND", async () => {
      const error = await expectRefused(
        db(),
        () => insertImage(db(), image({ name: "alpine", defaultKernel: "linux-9" })),
        NotFoundError,
        "KERNEL_NOT_FOUND",
      );
      expect(error.message).toBe('kernel "linux-9" does not exist');
    });

    it("deleting an image that VMs use: IMAGE_IN_USE, naming them", async () => {
      await insertVm(db(), vm());
      await insertVm(
        db(),
        vm({ id: "vm-0002", name: "dev", guestIp: "172.30.0.3", mac: "06:00:ac:1e:00:03", vsockCid: 4 }),
      );
      const error = await expectRefused(
        db(),
        () => deleteImage(db(), "debian"),
        FailedPreconditionError,
        "IMAGE_IN_USE",
      );
      expect(error.message).toBe('image "debian" is used by VMs box, dev; delete them first');
    });
  });
});
