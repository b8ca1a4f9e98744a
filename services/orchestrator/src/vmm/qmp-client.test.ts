/**
 * The QMP client against a real QEMU (`-M microvm`, started paused with no
 * guest: QMP answers the same), and against paths where nothing listens.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BangerError } from "@banger/common";
import { requireTools } from "@banger/common/testing";
import { afterEach, describe, expect, it } from "vitest";
import { createQmpClient } from "./qmp-client.js";

const QEMU = "/usr/bin/qemu-system-x86_64";
const haveQemu = requireTools("the QMP client against a real QEMU", [QEMU]).length === 0;

let qemu: ChildProcess | undefined;
let dir: string | undefined;
afterEach(() => {
  qemu?.kill("SIGKILL");
  if (dir) rmSync(dir, { recursive: true, force: true });
  qemu = dir = undefined;
});

describe.skipIf(!haveQemu)("QMP client against a real QEMU", () => {
  it("waits for the socket, reads the run state, resumes the machine and presses the power button", async () => {
    dir = mkdtempSync(join(tmpdir(), "qmp-"));
    const socket = join(dir, "qmp.sock");
    // Paused (-S) and without a kernel: QMP answers all the same.
    qemu = spawn(
      QEMU,
      [
        ...["-M", "microvm,x-option-roms=off", "-accel", "tcg", "-m", "128M"],
        ...["-nodefaults", "-no-user-config", "-nographic", "-S"],
        ...["-qmp", `unix:${socket},server=on,wait=off`],
      ],
      { stdio: "ignore" },
    );
    const client = createQmpClient(socket);
    await client.waitForSocket(AbortSignal.timeout(10_000), 10_000);
    expect(await client.status()).toEqual({ running: false, status: "prelaunch" });
    await client.cont();
    expect((await client.status()).running).toBe(true);
    await client.powerdown(); // no guest to act on it, but QEMU takes the press
  });

  it("sets a network link down and up again (up announces the guest: QEMU takes announce-self's arguments)", async () => {
    dir = mkdtempSync(join(tmpdir(), "qmp-"));
    const socket = join(dir, "qmp.sock");
    qemu = spawn(
      QEMU,
      [
        ...["-M", "microvm,x-option-roms=off", "-accel", "tcg", "-m", "128M"],
        ...["-nodefaults", "-no-user-config", "-nographic", "-S"],
        ...["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0"],
        ...["-qmp", `unix:${socket},server=on,wait=off`],
      ],
      { stdio: "ignore" },
    );
    const client = createQmpClient(socket);
    await client.waitForSocket(AbortSignal.timeout(10_000), 10_000);
    await client.setLink("net0", false);
    await client.setLink("net0", true);
    const error = (await client.setLink("nothing", true).catch((e: unknown) => e)) as BangerError;
    expect([error.kind, error.reason]).toEqual(["failed-precondition", "VMM_API_ERROR"]);
    expect(error.message).toMatch(/^qemu set_link: /);
  });
});

describe.skipIf(!haveQemu)("QMP client: a saved state taken back (incoming migration)", () => {
  let source: ChildProcess | undefined;
  afterEach(() => {
    source?.kill("SIGKILL");
    source = undefined;
  });

  it("loads in one session: parameters, the stream, its end, the link down, and the machine running", async () => {
    dir = mkdtempSync(join(tmpdir(), "qmp-"));
    const machine = [
      ...["-M", "microvm,x-option-roms=off", "-accel", "tcg", "-m", "64M"],
      ...["-nodefaults", "-no-user-config", "-nographic"],
      ...["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0"],
    ];
    // A machine saved paused to a file, as banger saves a VM (`exec:cat > FILE`).
    const sourceSocket = join(dir, "source.sock");
    source = spawn(QEMU, [...machine, "-S", "-qmp", `unix:${sourceSocket},server=on,wait=off`], { stdio: "ignore" });
    const saving = createQmpClient(sourceSocket);
    await saving.waitForSocket(AbortSignal.timeout(10_000), 10_000);
    await saving.cont();
    await saving.stop();
    const file = join(dir, "migration");
    await saving.migrate(`exec:cat > ${file}`);
    while ((await saving.queryMigrate()).status !== "completed") await new Promise((r) => setTimeout(r, 20));

    const socket = join(dir, "qmp.sock");
    qemu = spawn(QEMU, [...machine, "-incoming", "defer", "-qmp", `unix:${socket},server=on,wait=off`], {
      stdio: "ignore",
    });
    const client = createQmpClient(socket);
    await client.waitForSocket(AbortSignal.timeout(10_000), 10_000);
    expect(await client.status()).toEqual({ running: false, status: "inmigrate" });
    const state = await client.incoming(`exec:cat ${file}`, {
      parameters: { "announce-rounds": 0 },
      linkDown: "net0",
      timeoutMs: 30_000,
      signal: AbortSignal.timeout(30_000),
    });
    expect(state).toEqual({ running: true, status: "running" });
    expect(await client.status()).toEqual({ running: true, status: "running" });
  });
});

describe("QMP client without a QEMU", () => {
  it("names the socket and says nothing is there (UNAVAILABLE, VMM_API_UNREACHABLE)", async () => {
    const error = (await createQmpClient("/nonexistent/qmp.sock")
      .status()
      .catch((e: unknown) => e)) as BangerError;
    expect(error).toBeInstanceOf(BangerError);
    expect([error.kind, error.reason]).toEqual(["unavailable", "VMM_API_UNREACHABLE"]);
    expect(error.message).toBe("QMP socket /nonexistent/qmp.sock is unreachable: ENOENT");
  });

  it("gives up waiting for a socket that never appears", async () => {
    const started = Date.now();
    const error = (await createQmpClient("/nonexistent/qmp.sock")
      .waitForSocket(new AbortController().signal, 200)
      .catch((e: unknown) => e)) as BangerError;
    expect(error.reason).toBe("VMM_API_UNREACHABLE");
    expect(Date.now() - started).toBeGreaterThanOrEqual(200);
  });
});
