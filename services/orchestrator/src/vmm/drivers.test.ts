import { describe, expect, it } from "vitest";
import type { HostPort, LaunchedVmm } from "../core/ports.js";
import { qemuDriver, type QmpApi } from "./drivers.js";

/** A QMP that records what it is asked; an incoming migration leaves the machine running. */
function recordingQmp(calls: string[]): QmpApi {
  return {
    waitForSocket: () => Promise.resolve(),
    status: () => Promise.resolve({ running: true, status: "running" }),
    powerdown: () => Promise.resolve(),
    stop: () => Promise.resolve(),
    cont: () => Promise.resolve(),
    migrate: () => Promise.resolve(),
    queryMigrate: () => Promise.resolve({ status: "completed", error: "" }),
    incoming: (uri, { parameters, linkDown, timeoutMs }) => {
      calls.push(`incoming ${uri} ${JSON.stringify({ parameters, linkDown, timeoutMs })}`);
      return Promise.resolve({ running: true, status: "running" });
    },
    setLink: (name, up) => {
      calls.push(`set_link ${name} ${up}`);
      return Promise.resolve();
    },
  };
}

const launched: LaunchedVmm = {
  pid: 1,
  startTime: new Date(0),
  controlSocket: "/run/banger/vms/abc/qmp.sock",
  logPath: "",
  consolePath: "",
};

describe("the QEMU driver's restore", () => {
  it("a fork: no self-announcement, the migration, then the link held down before the guest runs", async () => {
    const calls: string[] = [];
    const driver = qemuDriver(
      {} as HostPort,
      () => recordingQmp(calls),
      () => Promise.resolve(false),
    );
    await driver.restore(launched, "/state/snapshots/s1", AbortSignal.timeout(5_000), {
      tap: "bgr-abc",
      rootDisk: "/state/vms/abc/root.ext4",
      workDisk: "/state/vms/abc/work.ext4",
    });
    // One session: no self-announcement, the migration, the link held down before the guest runs (qmp-client.test
    // runs that session against a real QEMU).
    expect(calls).toEqual([
      `incoming exec:cat '/state/snapshots/s1/migration' ${JSON.stringify({ parameters: { "announce-rounds": 0 }, linkDown: "net0", timeoutMs: 300_000 })}`,
    ]);
    expect(await driver.setLink(launched.controlSocket, true)).toBe(true);
    expect(calls.at(-1)).toBe("set_link net0 true");
  });

  it("a saved state of the VM itself: announced as usual, the link as it was", async () => {
    const calls: string[] = [];
    const driver = qemuDriver(
      {} as HostPort,
      () => recordingQmp(calls),
      () => Promise.resolve(false),
    );
    await driver.restore(launched, "/state/vms/abc/saved", AbortSignal.timeout(5_000));
    expect(calls).toEqual([
      `incoming exec:cat '/state/vms/abc/saved/migration' ${JSON.stringify({ timeoutMs: 300_000 })}`,
    ]);
  });
});
