import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import type { RunResult, SystemHost } from "./host.js";
import { RefusedError, requireSystemd, type SystemContext } from "./install.js";
import { UNIT_FILES } from "./layout.js";
import { UnitValueError, renderUnits, unitNodeLaunch, type UnitValues } from "./render.js";
import { unitStates } from "./status.js";

const CHECKOUT = resolve(import.meta.dirname, "../../../..");

const values = (over: Partial<UnitValues> = {}): UnitValues => ({
  version: "0.1.0",
  codeDir: "/opt/banger",
  node: "/usr/bin/node",
  owner: { user: "alice", uid: 1000, gid: 1000, home: "/home/alice" },
  firecracker: "/usr/local/bin/firecracker",
  dnsAddress: "172.30.0.1",
  ...over,
});

/** The templates are read from this checkout; the code path only goes into the rendered text. */
function render(over: Partial<UnitValues> = {}): Map<string, string> {
  return renderUnits(values(over), CHECKOUT);
}

describe("unit rendering", () => {
  it("says how each unit starts node, for `banger dev up` to start the services the same way", () => {
    const gcAndArenas = { nodeArgs: ["--expose-gc"], env: { MALLOC_ARENA_MAX: "2" } };
    expect(unitNodeLaunch("bangerd.service", CHECKOUT)).toEqual(gcAndArenas);
    expect(unitNodeLaunch("banger-image-puller.service", CHECKOUT)).toEqual(gcAndArenas);
    expect(unitNodeLaunch("banger-privileged.service", CHECKOUT)).toEqual({
      ...gcAndArenas,
      nodeArgs: ["--jitless", "--expose-gc"],
    });
    expect(() => unitNodeLaunch("bangerd.socket", CHECKOUT)).toThrow(UnitValueError);
  });

  it("hides /home from the helper and the puller when the code lives elsewhere, and shows bangerd only the owner's home", () => {
    const units = render();
    expect([...units.keys()].sort()).toEqual([...UNIT_FILES].sort());
    expect(units.get("banger-privileged.service")).toMatch(/^ProtectHome=yes$/m);
    expect(units.get("banger-image-puller.service")).toMatch(/^ProtectHome=yes$/m);
    expect(units.get("bangerd.service")).toMatch(
      /^ProtectHome=tmpfs\nBindReadOnlyPaths=\/home\/alice\nBindPaths=\/home\/alice\/\.config\/banger$/m,
    );
    expect(units.get("bangerd.service")).toContain(
      "ExecStart=/usr/bin/node --expose-gc /opt/banger/services/orchestrator/dist/bundle/main.js",
    );
  });

  it("binds code kept under a home directory back in, read-only", () => {
    const units = render({ codeDir: "/home/alice/src/banger", node: "/root/.nvm/node" });
    expect(units.get("banger-privileged.service")).toMatch(
      /^ProtectHome=tmpfs\nBindReadOnlyPaths=\/home\/alice\/src\/banger \/root\/\.nvm\/node$/m,
    );
    // bangerd sees the owner's home anyway; only the node under /root is added.
    expect(units.get("bangerd.service")).toMatch(/^BindReadOnlyPaths=\/home\/alice \/root\/\.nvm\/node$/m);
  });

  it("refuses a value systemd would read differently (spaces, % specifiers) instead of escaping it", () => {
    expect(() => render({ codeDir: "/opt/my banger" })).toThrow(UnitValueError);
    expect(() => render({ codeDir: "/opt/banger%i" })).toThrow(/letters, digits/);
    expect(() => render({ owner: { user: "Al ice", uid: 1000, gid: 1000, home: "/home/x" } })).toThrow(UnitValueError);
  });
});

function scriptedHost(systemdRunning: boolean, outputs: Record<string, string> = {}): SystemHost {
  const run = (argv: readonly string[]): RunResult => ({ code: 0, stdout: outputs[argv[0] ?? ""] ?? "", stderr: "" });
  return {
    run,
    mustRun: (argv) => run(argv).stdout,
    systemd: () => ({ running: systemdRunning, pid1: "process_api" }),
    euid: () => 0,
  };
}

describe("banger system on the host", () => {
  it("says what PID 1 is when it is not systemd", () => {
    const ctx = { host: scriptedHost(false) } as unknown as SystemContext;
    expect(() => requireSystemd(ctx, "install", true)).toThrow(RefusedError);
    expect(() => requireSystemd(ctx, "install", true)).toThrow(
      /systemd is not PID 1 on this machine \(PID 1 is process_api\).*nothing was changed.*--root DIR/,
    );
    expect(() =>
      requireSystemd({ host: scriptedHost(true) } as unknown as SystemContext, "status", false),
    ).not.toThrow();
  });

  it("reads each unit's state from systemctl show, in the order banger starts them", () => {
    const show = [
      "Id=bangerd.service\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled",
      "Id=banger-privileged.socket\nLoadState=loaded\nActiveState=active\nSubState=listening\nUnitFileState=enabled",
      "Id=banger-image-puller.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=",
    ].join("\n\n");
    const states = unitStates(scriptedHost(true, { systemctl: `${show}\n` }));
    expect(states.map((s) => s.unit)).toEqual(UNIT_FILES);
    expect(states.find((s) => s.unit === "bangerd.service")).toEqual({
      unit: "bangerd.service",
      load: "loaded",
      active: "active",
      sub: "running",
      enabled: "enabled",
    });
    expect(states.find((s) => s.unit === "banger-image-puller.service")).toMatchObject({
      load: "not-found",
      enabled: "-",
    });
    // A unit systemctl said nothing about.
    expect(states.find((s) => s.unit === "bangerd.socket")).toMatchObject({ load: "-", active: "-" });
  });
});
