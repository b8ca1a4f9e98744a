/**
 * The Firecracker API client against the fake Firecracker
 * (services/privileged/test-fixtures/fake-vmm.mjs), started here directly as
 * the current user with the command line the helper gives the real one. What
 * the client configured is read back from the fake's requests file.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, request, type Server } from "node:http";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { DeadlineExceededError, FailedPreconditionError, UnavailableError } from "@banger/common";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { HostPort } from "../core/host.js";
import { createAgentClient } from "./agent-client.js";
import { firecrackerDriver } from "./drivers.js";
import { createFirecrackerClient, type FirecrackerClient } from "./firecracker-client.js";

const FAKE_VMM = fileURLToPath(new URL("../../../privileged/test-fixtures/fake-vmm.mjs", import.meta.url));
const VM_ID = "vm-0123";

interface Fake {
  readonly dir: string;
  readonly socket: string;
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  console: string;
}

let base: string;
let fake: Fake | undefined;

beforeEach(() => {
  // Under /tmp: socket paths must stay well below 108 bytes.
  base = mkdtempSync("/tmp/bgr-fc-");
});

afterEach(async () => {
  if (fake !== undefined && fake.child.exitCode === null && fake.child.signalCode === null) {
    fake.child.kill("SIGKILL");
    await fake.exited;
  }
  fake = undefined;
  rmSync(base, { recursive: true, force: true });
});

/** Launches the fake the way the helper launches Firecracker; its API socket is not there yet. */
function launchFake(): Fake {
  const dir = join(base, "vms", VM_ID);
  mkdirSync(dir, { recursive: true });
  const socket = join(dir, "firecracker.sock");
  const child = spawn(
    process.execPath,
    [FAKE_VMM, "--api-sock", socket, "--id", VM_ID, "--log-path", join(dir, "vmm.log"), "--level", "Info"],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  const started: Fake = { dir, socket, child, exited, console: "" };
  child.stdout?.on("data", (chunk: Buffer) => (started.console += chunk.toString()));
  fake = started;
  return started;
}

async function startedFake(): Promise<{ fake: Fake; client: FirecrackerClient }> {
  const launched = launchFake();
  const client = createFirecrackerClient(launched.socket, { timeoutMs: 2000 });
  await client.waitForSocket(AbortSignal.timeout(10_000), 5000);
  return { fake: launched, client };
}

/** What the fake accepted, in order. */
function requests(dir: string): { method: string; path: string; body: unknown }[] {
  const file = join(dir, "fake-firecracker.requests.jsonl");
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => JSON.parse(line) as { method: string; path: string; body: unknown });
}

/** A kernel, an initrd and two disks: the fake opens them as Firecracker does, so they must exist. */
function guestFiles(dir: string) {
  const files = {
    kernel: join(dir, "vmlinux"),
    initrd: join(dir, "initrd.img"),
    rootfs: join(dir, "root.ext4"),
    work: join(dir, "work.ext4"),
  };
  for (const path of Object.values(files)) writeFileSync(path, Buffer.alloc(4096));
  return files;
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected a rejection");
}

describe("configuring and starting a VM", () => {
  it("sends exactly the configuration, boots, and reports the state", async () => {
    const { fake, client } = await startedFake();
    const files = guestFiles(fake.dir);
    const vsockPath = join(fake.dir, "vsock.sock");

    expect(await client.describeInstance()).toEqual({
      id: VM_ID,
      state: "Not started",
      vmmVersion: expect.any(String) as string,
      appName: "Firecracker",
    });
    await client.putMachineConfig({ vcpuCount: 2, memSizeMib: 1024 });
    await client.putBootSource({
      kernelImagePath: files.kernel,
      bootArgs: "console=ttyS0 reboot=k panic=1",
      initrdPath: files.initrd,
    });
    await client.putDrive({ driveId: "rootfs", pathOnHost: files.rootfs, isRootDevice: true, isReadOnly: false });
    await client.putDrive({ driveId: "work", pathOnHost: files.work, isRootDevice: false, isReadOnly: false });
    await client.putNetworkInterface({ ifaceId: "eth0", hostDevName: "tap-bgr0", guestMac: "06:00:0a:00:00:02" });
    await client.putVsock({ guestCid: 3, udsPath: vsockPath });
    await client.instanceStart();

    expect((await client.describeInstance()).state).toBe("Running");
    expect(requests(fake.dir)).toEqual([
      { method: "GET", path: "/", body: null },
      { method: "PUT", path: "/machine-config", body: { vcpu_count: 2, mem_size_mib: 1024, smt: false } },
      {
        method: "PUT",
        path: "/boot-source",
        body: {
          kernel_image_path: files.kernel,
          boot_args: "console=ttyS0 reboot=k panic=1",
          initrd_path: files.initrd,
        },
      },
      {
        method: "PUT",
        path: "/drives/rootfs",
        body: { drive_id: "rootfs", path_on_host: files.rootfs, is_root_device: true, is_read_only: false },
      },
      {
        method: "PUT",
        path: "/drives/work",
        body: { drive_id: "work", path_on_host: files.work, is_root_device: false, is_read_only: false },
      },
      {
        method: "PUT",
        path: "/network-interfaces/eth0",
        body: { iface_id: "eth0", host_dev_name: "tap-bgr0", guest_mac: "06:00:0a:00:00:02" },
      },
      { method: "PUT", path: "/vsock", body: { guest_cid: 3, uds_path: vsockPath } },
      { method: "PUT", path: "/actions", body: { action_type: "InstanceStart" } },
      { method: "GET", path: "/", body: null },
    ]);
    // Firecracker binds the vsock socket when it is configured; the guest console shows the boot.
    expect(existsSync(vsockPath)).toBe(true);
    expect(fake.console).toContain(`fake-vmm: guest of ${VM_ID} booting`);
  });

  it("leaves out optional boot source and interface fields that are not given", async () => {
    const { fake, client } = await startedFake();
    const files = guestFiles(fake.dir);
    await client.putBootSource({ kernelImagePath: files.kernel });
    await client.putNetworkInterface({ ifaceId: "eth0", hostDevName: "tap-bgr0" });
    expect(requests(fake.dir)).toEqual([
      { method: "PUT", path: "/boot-source", body: { kernel_image_path: files.kernel } },
      { method: "PUT", path: "/network-interfaces/eth0", body: { iface_id: "eth0", host_dev_name: "tap-bgr0" } },
    ]);
  });

  it("pauses and resumes a running VM", async () => {
    const { fake, client } = await startedFake();
    await client.putBootSource({ kernelImagePath: guestFiles(fake.dir).kernel });
    await client.instanceStart();
    await client.pause();
    expect((await client.describeInstance()).state).toBe("Paused");
    await client.resume();
    expect((await client.describeInstance()).state).toBe("Running");
  });

  it("SendCtrlAltDel shuts the guest down and the VMM exits 0", async () => {
    const { fake, client } = await startedFake();
    await client.putBootSource({ kernelImagePath: guestFiles(fake.dir).kernel });
    await client.instanceStart();
    await client.sendCtrlAltDel();
    expect(await fake.exited).toEqual({ code: 0, signal: null });
    expect(requests(fake.dir).at(-1)).toEqual({
      method: "PUT",
      path: "/actions",
      body: { action_type: "SendCtrlAltDel" },
    });
    expect(readFileSync(join(fake.dir, "vmm.log"), "utf8")).toMatch(/ctrl-alt-del[\s\S]*guest-shutdown/);
  });
});

describe("the guest agent over Firecracker's hybrid vsock", () => {
  const agentOf = (socket: string) =>
    createAgentClient(firecrackerDriver({} as HostPort, (path) => createFirecrackerClient(path)).agent(socket));

  it("answers once the guest runs (CONNECT 1024), and guest-shutdown powers the guest off", async () => {
    const { fake, client } = await startedFake();
    const files = guestFiles(fake.dir);
    await client.putBootSource({ kernelImagePath: files.kernel, bootArgs: "console=ttyS0" });
    await client.putVsock({ guestCid: 3, udsPath: join(fake.dir, "vsock.sock") });
    // Before the guest runs, nothing listens behind the port: the connection is closed.
    await expect(agentOf(fake.socket).ping(2_000)).rejects.toMatchObject({ reason: "AGENT_UNREACHABLE" });
    await client.instanceStart();
    expect(await agentOf(fake.socket).ping(2_000)).toEqual({ version: "0.0.0-fake" });
    expect(await agentOf(fake.socket).exec("/run/banger/busybox", ["true"], 2_000)).toBe(4242);
    await agentOf(fake.socket).shutdown(500);
    expect(await fake.exited).toEqual({ code: 0, signal: null });
    const log = readFileSync(join(fake.dir, "vmm.log"), "utf8");
    expect(log).toMatch(/vsock-connect \{"port":1024\}[\s\S]*agent-exec[\s\S]*agent-shutdown \{"mode":"powerdown"\}/);
  });

  it("a guest without the kit (fake.agent=off) never answers", async () => {
    const { fake, client } = await startedFake();
    await client.putBootSource({ kernelImagePath: guestFiles(fake.dir).kernel, bootArgs: "fake.agent=off" });
    await client.putVsock({ guestCid: 3, udsPath: join(fake.dir, "vsock.sock") });
    await client.instanceStart();
    await expect(agentOf(fake.socket).ping(2_000)).rejects.toMatchObject({ reason: "AGENT_UNREACHABLE" });
  });
});

describe("refusals carry Firecracker's fault message", () => {
  /** Expects a VMM_API_ERROR with `firecracker <METHOD> <path>: ` and then the fault message. */
  async function expectApiError(promise: Promise<unknown>, method: string, path: string, fault: string | RegExp) {
    const error = await rejection(promise);
    expect(error).toBeInstanceOf(FailedPreconditionError);
    expect(error).toMatchObject({ kind: "failed-precondition", reason: "VMM_API_ERROR" });
    const message = (error as Error).message;
    const prefix = `firecracker ${method} ${path}: `;
    expect(message.startsWith(prefix)).toBe(true);
    const rest = message.slice(prefix.length);
    if (typeof fault === "string") expect(rest).toBe(fault);
    else expect(rest).toMatch(fault);
  }

  it("an unknown field is refused by name; the client sends only the fields it knows", async () => {
    const { fake, client } = await startedFake();
    const answer = await rawPut(fake.socket, "/machine-config", { vcpu_count: 2, mem_size_mib: 512, cpus: 4 });
    expect(answer.status).toBe(400);
    expect(answer.body).toEqual({
      fault_message: expect.stringMatching(
        /^An error occurred when deserializing the json body of a request: unknown field `cpus`, expected one of /,
      ) as string,
    });
    // Extra properties on the object handed to the client never reach the wire.
    const withExtra = { vcpuCount: 2, memSizeMib: 512, cpus: 4 };
    await client.putMachineConfig(withExtra);
    expect(requests(fake.dir)).toEqual([
      { method: "PUT", path: "/machine-config", body: { vcpu_count: 2, mem_size_mib: 512, smt: false } },
    ]);
  });

  it("out-of-range machine config is refused and nothing is recorded", async () => {
    const { fake, client } = await startedFake();
    await expectApiError(
      client.putMachineConfig({ vcpuCount: 33, memSizeMib: 512 }),
      "PUT",
      "/machine-config",
      /^Machine config error: The number of vCPUs must be greater than 0, less than 32/,
    );
    await expectApiError(
      client.putMachineConfig({ vcpuCount: 1, memSizeMib: 0 }),
      "PUT",
      "/machine-config",
      /^Machine config error: The memory size \(MiB\) is either 0/,
    );
    await expectApiError(
      client.putMachineConfig({ vcpuCount: 256, memSizeMib: 512 }),
      "PUT",
      "/machine-config",
      /deserializing the json body of a request: invalid value: integer `256`, expected u8/,
    );
    expect(requests(fake.dir)).toEqual([]);
  });

  it("a missing kernel, initrd or disk file is refused with the path and the OS error", async () => {
    const { fake, client } = await startedFake();
    const files = guestFiles(fake.dir);
    const missing = join(fake.dir, "missing.ext4");
    await expectApiError(
      client.putBootSource({ kernelImagePath: join(fake.dir, "no-kernel") }),
      "PUT",
      "/boot-source",
      "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)",
    );
    await expectApiError(
      client.putBootSource({ kernelImagePath: files.kernel, initrdPath: join(fake.dir, "no-initrd") }),
      "PUT",
      "/boot-source",
      /^Boot source error: The initrd file cannot be opened .* No such file or directory \(os error 2\)$/,
    );
    await expectApiError(
      client.putDrive({ driveId: "rootfs", pathOnHost: missing, isRootDevice: true, isReadOnly: false }),
      "PUT",
      "/drives/rootfs",
      `Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) ${missing}`,
    );
    expect(requests(fake.dir)).toEqual([]);
  });

  it("a second root device, a bad id and a bad MAC are refused", async () => {
    const { fake, client } = await startedFake();
    const files = guestFiles(fake.dir);
    await client.putDrive({ driveId: "rootfs", pathOnHost: files.rootfs, isRootDevice: true, isReadOnly: false });
    await expectApiError(
      client.putDrive({ driveId: "other", pathOnHost: files.work, isRootDevice: true, isReadOnly: false }),
      "PUT",
      "/drives/other",
      "Drive config error: A root block device already exists!",
    );
    await expectApiError(
      client.putDrive({ driveId: "work-disk", pathOnHost: files.work, isRootDevice: false, isReadOnly: false }),
      "PUT",
      "/drives/work-disk",
      "API Resource IDs can only contain alphanumeric characters and underscores.",
    );
    await expectApiError(
      client.putNetworkInterface({ ifaceId: "eth0", hostDevName: "tap0", guestMac: "06:00:0a:00:02" }),
      "PUT",
      "/network-interfaces/eth0",
      /The provided MAC address is invalid\./,
    );
    await expectApiError(
      client.putNetworkInterface({ ifaceId: "eth0", hostDevName: "a-tap-name-too-long" }),
      "PUT",
      "/network-interfaces/eth0",
      "Network config error: Could not create the network device: Open tap device failed: Invalid interface name",
    );
    expect(requests(fake.dir).map((r) => r.path)).toEqual(["/drives/rootfs"]);
  });

  it("a drive id in the path that differs from the body's is refused", async () => {
    const { fake } = await startedFake();
    const files = guestFiles(fake.dir);
    const answer = await rawPut(fake.socket, "/drives/rootfs", {
      drive_id: "root",
      path_on_host: files.rootfs,
      is_root_device: true,
      is_read_only: false,
    });
    expect(answer).toEqual({
      status: 400,
      body: { fault_message: "The id from the path does not match the id from the body!" },
    });
    expect(requests(fake.dir)).toEqual([]);
  });

  it("InstanceStart without a boot source, and configuration after the start, are refused", async () => {
    const { fake, client } = await startedFake();
    const files = guestFiles(fake.dir);
    await expectApiError(
      client.instanceStart(),
      "PUT",
      "/actions",
      "Start microvm error: Cannot start microvm without kernel configuration.",
    );
    await expectApiError(
      client.sendCtrlAltDel(),
      "PUT",
      "/actions",
      "The requested operation is not supported before starting the microVM.",
    );
    await client.putBootSource({ kernelImagePath: files.kernel });
    await client.instanceStart();
    const postBoot = "The requested operation is not supported after starting the microVM.";
    await expectApiError(
      client.putMachineConfig({ vcpuCount: 1, memSizeMib: 256 }),
      "PUT",
      "/machine-config",
      postBoot,
    );
    await expectApiError(
      client.putDrive({ driveId: "work", pathOnHost: files.work, isRootDevice: false, isReadOnly: false }),
      "PUT",
      "/drives/work",
      postBoot,
    );
    await expectApiError(client.instanceStart(), "PUT", "/actions", postBoot);
    expect((await client.describeInstance()).state).toBe("Running");
    expect(requests(fake.dir).map((r) => `${r.method} ${r.path}`)).toEqual([
      "PUT /boot-source",
      "PUT /actions",
      "GET /",
    ]);
  });

  it("a non-JSON error answer is reported with its status", async () => {
    const socket = join(base, "odd.sock");
    const server = createServer((_req, res) => {
      res.writeHead(500, { "Content-Type": "text/plain" });
      res.end("boom");
    });
    await listen(server, socket);
    try {
      await expectApiError(createFirecrackerClient(socket).instanceStart(), "PUT", "/actions", "HTTP 500 boom");
    } finally {
      server.close();
    }
  });
});

describe("reaching the socket", () => {
  it("a missing socket is VMM_API_UNREACHABLE naming the path", async () => {
    const socket = join(base, "nothing-here.sock");
    const error = await rejection(createFirecrackerClient(socket).describeInstance());
    expect(error).toBeInstanceOf(UnavailableError);
    expect(error).toMatchObject({ kind: "unavailable", reason: "VMM_API_UNREACHABLE" });
    expect((error as Error).message).toContain(socket);
  });

  it("a socket nobody listens on any more is VMM_API_UNREACHABLE", async () => {
    const { fake, client } = await startedFake();
    fake.child.kill("SIGKILL");
    await fake.exited;
    expect(existsSync(fake.socket)).toBe(true); // stale, as after a crash
    const error = await rejection(client.putMachineConfig({ vcpuCount: 1, memSizeMib: 128 }));
    expect(error).toMatchObject({ kind: "unavailable", reason: "VMM_API_UNREACHABLE" });
    expect((error as Error).message).toContain(fake.socket);
  });

  it("waitForSocket waits for the socket to appear, and gives up at its deadline", async () => {
    const launched = launchFake();
    const client = createFirecrackerClient(launched.socket);
    await client.waitForSocket(AbortSignal.timeout(10_000), 5000);
    expect(existsSync(launched.socket)).toBe(true);

    const never = createFirecrackerClient(join(base, "never.sock"));
    const started = Date.now();
    const error = await rejection(never.waitForSocket(AbortSignal.timeout(10_000), 150));
    expect(error).toBeInstanceOf(DeadlineExceededError);
    expect((error as Error).message).toContain(join(base, "never.sock"));
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it("a VMM that does not answer in time is DEADLINE_EXCEEDED", async () => {
    const socket = join(base, "silent.sock");
    const server = createServer(() => {
      // never answers
    });
    await listen(server, socket);
    try {
      const error = await rejection(createFirecrackerClient(socket, { timeoutMs: 100 }).describeInstance());
      expect(error).toBeInstanceOf(DeadlineExceededError);
      expect(error).toMatchObject({ reason: "VMM_API_TIMEOUT" });
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it("an aborted signal ends the call as cancelled", async () => {
    const socket = join(base, "silent.sock");
    const server = createServer(() => {
      // never answers
    });
    await listen(server, socket);
    try {
      const controller = new AbortController();
      const pending = rejection(createFirecrackerClient(socket).describeInstance({ signal: controller.signal }));
      setTimeout(() => controller.abort(), 50);
      expect(await pending).toMatchObject({ kind: "cancelled" });
      const already = await rejection(createFirecrackerClient(socket).instanceStart({ signal: AbortSignal.abort() }));
      expect(already).toMatchObject({ kind: "cancelled" });
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});

function listen(server: Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolve());
  });
}

/** A PUT the typed client would never send, to see the API's own answer. */
function rawPut(socketPath: string, path: string, body: unknown): Promise<{ status: number; body: unknown }> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method: "PUT",
        path,
        agent: false,
        headers: { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString()) as unknown }),
        );
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}
