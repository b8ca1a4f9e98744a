import { AlreadyExistsError, NotFoundError } from "@banger/common";
import { beforeEach, describe, expect, it } from "vitest";
import { insertImage } from "./image-repository.js";
import { insertKernel } from "./kernel-repository.js";
import { T0, at, expectRefused, image, kernel, useStore, vm } from "../../test-support/store.js";
import { deleteVm, getVmById, getVmByName, insertVm, listVms, updateVm } from "./vm-repository.js";

describe("vm repository", () => {
  const store = useStore();
  const db = () => store().db;

  beforeEach(async () => {
    await insertKernel(db(), kernel());
    await insertKernel(db(), kernel({ name: "debian-6.12" }));
    await insertImage(db(), image());
    await insertVm(db(), vm());
  });

  it("stores a VM and reads it back field for field", async () => {
    const expected = {
      id: "vm-0001",
      name: "box",
      imageName: "debian",
      kernelName: "debian-6.1",
      vcpu: 2,
      memoryMib: 1024,
      workDiskMib: 8192,
      guestIp: "172.30.0.2",
      mac: "06:00:ac:1e:00:02",
      vsockCid: 3,
      nat: true,
      vmm: "firecracker",
      rootDiskStrategy: "dm-snapshot",
      desiredState: "running",
      lastError: null,
      pendingChanges: {},
      createdAt: T0,
      updatedAt: T0,
      startedAt: null,
      publishedPorts: [],
    };
    expect(await getVmByName(db(), "box")).toEqual(expected);
    expect(await getVmById(db(), "vm-0001")).toEqual(expected);
    expect(await getVmByName(db(), "nope")).toBeUndefined();
  });

  it("lists VMs by name", async () => {
    await insertVm(
      db(),
      vm({ id: "vm-0002", name: "alpha", guestIp: "172.30.0.3", mac: "06:00:ac:1e:00:03", vsockCid: 4 }),
    );
    expect((await listVms(db())).map((v) => v.name)).toEqual(["alpha", "box"]);
  });

  it("updates what may change and returns the VM as it now is", async () => {
    const updated = await updateVm(db(), "box", {
      updatedAt: at(60),
      kernelName: "debian-6.12",
      desiredState: "stopped",
      nat: false,
      lastError: "wait-ssh: no answer in 30s (op-3f9a2c01b7de)",
      pendingChanges: { vcpu: 4, memoryMib: 2048 },
      startedAt: at(30),
    });
    expect(updated).toMatchObject({
      kernelName: "debian-6.12",
      desiredState: "stopped",
      nat: false,
      lastError: "wait-ssh: no answer in 30s (op-3f9a2c01b7de)",
      pendingChanges: { vcpu: 4, memoryMib: 2048 },
      startedAt: at(30),
      updatedAt: at(60),
      createdAt: T0,
      vcpu: 2,
    });
    expect(await getVmByName(db(), "box")).toEqual(updated);
    const cleared = await updateVm(db(), "box", { updatedAt: at(61), lastError: null, startedAt: null });
    expect(cleared).toMatchObject({ lastError: null, startedAt: null, kernelName: "debian-6.12" });
  });

  it("keeps a VM's published ports, sorted by host port and protocol, and replaces them on update", async () => {
    const udp = { hostIp: "127.0.0.1", hostPort: 5353, guestPort: 53, protocol: "udp" } as const;
    const web = { hostIp: "0.0.0.0", hostPort: 8080, guestPort: 80, protocol: "tcp" } as const;
    const dns = { ...udp, protocol: "tcp" } as const;
    const updated = await updateVm(db(), "box", { updatedAt: at(1), publishedPorts: [web, udp, dns] });
    expect(updated.publishedPorts).toEqual([dns, udp, web]);
    expect((await getVmByName(db(), "box"))?.publishedPorts).toEqual([dns, udp, web]);
    expect((await updateVm(db(), "box", { updatedAt: at(2), publishedPorts: [] })).publishedPorts).toEqual([]);
  });

  it("deletes a VM; deleting it again is not an error", async () => {
    expect(await deleteVm(db(), "box")).toBe(true);
    expect(await getVmByName(db(), "box")).toBeUndefined();
    expect(await deleteVm(db(), "box")).toBe(false);
  });

  describe("refuses, changing nothing", () => {
    const other = { id: "vm-0002", name: "other", guestIp: "172.30.0.3", mac: "06:00:ac:1e:00:03", vsockCid: 4 };

    it("a second VM with the same name: VM_NAME_TAKEN", async () => {
      const error = await expectRefused(
        db(),
        () => insertVm(db(), vm({ ...other, name: "box" })),
        AlreadyExistsError,
        "VM_NAME_TAKEN",
      );
      expect(error.message).toContain('"box"');
    });

    it("a second VM with the same id: VM_ID_TAKEN", async () => {
      await expectRefused(
        db(),
        () => insertVm(db(), vm({ ...other, id: "vm-0001" })),
        AlreadyExistsError,
        "VM_ID_TAKEN",
      );
    });

    it("a guest IP in use: ADDRESS_TAKEN", async () => {
      const error = await expectRefused(
        db(),
        () => insertVm(db(), vm({ ...other, guestIp: "172.30.0.2" })),
        AlreadyExistsError,
        "ADDRESS_TAKEN",
      );
      expect(error.message).toContain("172.30.0.2");
    });

    it("a MAC in use, whatever its letter case: ADDRESS_TAKEN", async () => {
      const error = await expectRefused(
        db(),
        () => insertVm(db(), vm({ ...other, mac: "06:00:AC:1E:00:02" })),
        AlreadyExistsError,
        "ADDRESS_TAKEN",
      );
      expect(error.message).toContain("MAC");
    });

    it("a vsock CID in use: ADDRESS_TAKEN", async () => {
      const error = await expectRefused(
        db(),
        () => insertVm(db(), vm({ ...other, vsockCid: 3 })),
        AlreadyExistsError,
        "ADDRESS_TAKEN",
      );
      expect(error.message).toContain("vsock CID 3");
    });

    it("an image that does not exist: IMAGE_NOT_FOUND", async () => {
      const error = await expectRefused(
        db(),
        () => insertVm(db(), vm({ ...other, imageName: "arch" })),
        NotFoundError,
        "IMAGE_NOT_FOUND",
      );
      expect(error.message).toBe('image "arch" does not exist');
    });

    it("a kernel that does not exist: KERNEL_NOT_FOUND", async () => {
      await expectRefused(
        db(),
        () => insertVm(db(), vm({ ...other, kernelName: "linux-9" })),
        NotFoundError,
        "KERNEL_NOT_FOUND",
      );
    });

    it("switching to a kernel that does not exist: KERNEL_NOT_FOUND", async () => {
      await expectRefused(
        db(),
        () => updateVm(db(), "box", { updatedAt: at(1), kernelName: "linux-9", vcpu: 8 }),
        NotFoundError,
        "KERNEL_NOT_FOUND",
      );
    });

    it("updating a VM that does not exist: VM_NOT_FOUND", async () => {
      await expectRefused(
        db(),
        () => updateVm(db(), "ghost", { updatedAt: at(1), vcpu: 8 }),
        NotFoundError,
        "VM_NOT_FOUND",
      );
    });
  });
});
