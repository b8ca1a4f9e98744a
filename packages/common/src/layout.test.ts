import { describe, expect, it } from "vitest";
import { imageFiles, kernelDirFiles, runtimeLayout, stateLayout } from "./layout.js";

// The on-disk layout is a contract between the three services and the installed units
// (docs/ARCHITECTURE.md "On disk"): these are the paths each of them opens.
describe("layout", () => {
  it("derives every state path the services share", () => {
    const state = stateLayout("/var/lib/banger");
    expect(state.database).toBe("/var/lib/banger/banger.db");
    expect(state.image("debian")).toEqual({
      dir: "/var/lib/banger/images/debian",
      rootfs: "/var/lib/banger/images/debian/rootfs.ext4",
      workSeed: "/var/lib/banger/images/debian/work-seed.ext4",
    });
    expect(state.imageStagingDir).toBe("/var/lib/banger/images/.staging");
    expect(state.kernelStagingDir).toBe("/var/lib/banger/kernels/.staging");
    const kernel = state.kernel("host-6.1.0");
    expect([kernel.kernel(true), kernel.kernel(false), kernel.initrd, kernel.kitMarker, kernel.modules]).toEqual([
      "/var/lib/banger/kernels/host-6.1.0/vmlinux",
      "/var/lib/banger/kernels/host-6.1.0/vmlinuz",
      "/var/lib/banger/kernels/host-6.1.0/initrd",
      "/var/lib/banger/kernels/host-6.1.0/initrd.kit.json",
      "/var/lib/banger/kernels/host-6.1.0/modules",
    ]);
    expect(state.vm("0123456789ab")).toEqual({
      dir: "/var/lib/banger/vms/0123456789ab",
      rootDisk: "/var/lib/banger/vms/0123456789ab/root.ext4",
      rootCow: "/var/lib/banger/vms/0123456789ab/root.cow",
      workDisk: "/var/lib/banger/vms/0123456789ab/work.ext4",
      handles: "/var/lib/banger/vms/0123456789ab/handles.json",
      creatingMarker: "/var/lib/banger/vms/0123456789ab/creating",
      savedDir: "/var/lib/banger/vms/0123456789ab/saved",
    });
    expect([state.workspacesDir, state.blobCacheDir, state.builtCacheDir, state.logFile("privileged")]).toEqual([
      "/var/lib/banger/workspaces",
      "/var/lib/banger/cache/blobs",
      "/var/lib/banger/cache/built",
      "/var/lib/banger/logs/privileged.jsonl",
    ]);
  });

  it("tells the VM a state path belongs to, and nothing for paths outside vms/", () => {
    const state = stateLayout("/state/");
    expect(state.vmIdOf("/state/vms/0123456789ab/root.cow")).toBe("0123456789ab");
    expect(state.vmIdOf("/state/images/debian/rootfs.ext4")).toBeUndefined();
    expect(state.vmIdOf("/state/vmsx/0123456789ab/root.cow")).toBeUndefined();
  });

  it("derives the sockets and each VM's runtime directory", () => {
    const run = runtimeLayout("/run/banger");
    expect([run.orchestratorSocket, run.privilegedSocket, run.pullerSocket, run.vmsDir]).toEqual([
      "/run/banger/orchestrator.sock",
      "/run/banger/privileged.sock",
      "/run/banger/image-puller.sock",
      "/run/banger/vms",
    ]);
    expect(run.vm("0123456789ab")).toEqual({
      dir: "/run/banger/vms/0123456789ab",
      firecrackerSocket: "/run/banger/vms/0123456789ab/firecracker.sock",
      qmpSocket: "/run/banger/vms/0123456789ab/qmp.sock",
      agentSocket: "/run/banger/vms/0123456789ab/agent.sock",
      vsockSocket: "/run/banger/vms/0123456789ab/vsock.sock",
      consoleLog: "/run/banger/vms/0123456789ab/console.log",
      vmmLog: "/run/banger/vms/0123456789ab/vmm.log",
    });
  });

  it("names the files of a staged image or kernel the same as a published one", () => {
    expect(imageFiles("/s/op1").rootfs).toBe("/s/op1/rootfs.ext4");
    expect(kernelDirFiles("/s/op2").initrd).toBe("/s/op2/initrd");
  });
});
