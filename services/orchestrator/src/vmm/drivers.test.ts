import { describe, expect, it } from "vitest";
import type { HostPort, LaunchedVmm } from "../core/ports.js";
import { qemuDriver, type QmpApi } from "./drivers.js";

/** A QMP that records what it is asked; the incoming migration is done at the second status. */
function recordingQmp(calls: string[]): QmpApi {
  let statuses = 0;
  let status = "inmigrate";
  return {
    waitForSocket: () => Promise.resolve(),
    status: () => {
      calls.push("query-status");
      if (++statuses >= 2 && status === "inmigrate") status = "paused";
      return Promise.resolve({ running: status === "running", status });
    },
    powerdown: () => Promise.resolve(),
    stop: () => Promise.resolve(),
    cont: () => {
      calls.push("cont");
      status = "running";
      return Promise.resolve();
    },
    migrate: () => Promise.resolve(),
    queryMigrate: () => Promise.resolve({ status: "completed", error: "" }),
    migrateIncoming: (uri) => {
      calls.push(`migrate-incoming ${uri}`);
      return Promise.resolve();
    },
    setLink: (name, up) => {
      calls.push(`set_link ${name} ${up}`);
      return Promise.resolve();
    },
    setMigrationParameters: (parameters) => {
      calls.push(`migrate-set-parameters ${JSON.stringify(parameters)}`);
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
    expect(calls).toEqual([
      'migrate-set-parameters {"announce-rounds":0}',
      "migrate-incoming exec:cat '/state/snapshots/s1/migration'",
      "query-status",
      "query-status",
      "set_link net0 false",
      "cont",
      "query-status",
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
    expect(calls.filter((c) => c.startsWith("set_link") || c.startsWith("migrate-set"))).toEqual([]);
    expect(calls).toContain("cont");
  });
});
