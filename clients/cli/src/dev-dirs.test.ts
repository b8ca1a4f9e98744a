import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { openRootDir } from "./commands/dev-files.js";
import { resolveOrchestratorSocket } from "./context.js";
import { defaultDevDirs } from "./dev-dirs.js";

const dir = mkdtempSync(join(tmpdir(), "banger-devdirs-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const me = process.getuid?.() ?? 0;

describe("dev up's default directories", () => {
  it("as root: per owner under root's /run/banger-dev and /var/lib/banger-dev, whatever the environment says", () => {
    expect(defaultDevDirs(1000, true, { XDG_RUNTIME_DIR: "/run/user/1000", HOME: "/home/ada" })).toEqual({
      runtimeDir: "/run/banger-dev/1000",
      stateDir: "/var/lib/banger-dev/1000",
    });
  });

  it("not as root: the caller's own directories, never a shared one", () => {
    expect(defaultDevDirs(1000, false, { XDG_RUNTIME_DIR: "/run/user/1000", HOME: "/home/ada" })).toEqual({
      runtimeDir: "/run/user/1000/banger-dev",
      stateDir: "/home/ada/.local/state/banger-dev",
    });
    expect(defaultDevDirs(1000, false, { XDG_STATE_HOME: "/s", HOME: "/home/ada" })).toEqual({
      runtimeDir: "/s/banger-dev/run",
      stateDir: "/s/banger-dev",
    });
    // Relative values are not directories anyone meant.
    expect(defaultDevDirs(1000, false, { XDG_RUNTIME_DIR: "run", XDG_STATE_HOME: "s", HOME: "/h" })).toEqual({
      runtimeDir: "/h/.local/state/banger-dev/run",
      stateDir: "/h/.local/state/banger-dev",
    });
  });
});

describe("the CLI's socket search", () => {
  const none = { BANGER_SOCKET: "", BANGER_RUNTIME_DIR: "" };

  it("--socket, $BANGER_SOCKET and $BANGER_RUNTIME_DIR win; with nothing running, the installed socket", () => {
    expect(resolveOrchestratorSocket({ socket: "/a.sock" }, { BANGER_SOCKET: "/b.sock" })).toBe("/a.sock");
    expect(resolveOrchestratorSocket({}, { BANGER_SOCKET: "/b.sock", BANGER_RUNTIME_DIR: "/r" })).toBe("/b.sock");
    expect(resolveOrchestratorSocket({}, { BANGER_RUNTIME_DIR: "/r" })).toBe("/r/orchestrator.sock");
    expect(resolveOrchestratorSocket({}, { ...none, XDG_RUNTIME_DIR: join(dir, "empty") }, 4242)).toBe(
      "/run/banger/orchestrator.sock",
    );
  });

  it("finds the caller's own dev up in $XDG_RUNTIME_DIR/banger-dev, but not one in a directory someone else owns", () => {
    const xdg = join(dir, "xdg");
    mkdirSync(join(xdg, "banger-dev"), { recursive: true });
    writeFileSync(join(xdg, "banger-dev", "orchestrator.sock"), "");
    const env = { ...none, XDG_RUNTIME_DIR: xdg };
    expect(resolveOrchestratorSocket({}, env, me)).toBe(join(xdg, "banger-dev", "orchestrator.sock"));
    if (me === 0) {
      chownSync(join(xdg, "banger-dev"), 4242, 4242);
      expect(resolveOrchestratorSocket({}, env, me)).toBe("/run/banger/orchestrator.sock");
    }
  });
});

describe.skipIf(me !== 0)("openRootDir", () => {
  it("makes the parent root's 0755, lets owners enter one made 0700, refuses one another user owns or may write", () => {
    openRootDir(join(dir, "made", "banger-dev")).close();
    expect(statSync(join(dir, "made", "banger-dev")).mode & 0o777).toBe(0o755);
    mkdirSync(join(dir, "locked"), { mode: 0o700 });
    openRootDir(join(dir, "locked")).close();
    expect(statSync(join(dir, "locked")).mode & 0o777).toBe(0o755);

    mkdirSync(join(dir, "theirs"), { mode: 0o755 });
    chownSync(join(dir, "theirs"), 4242, 4242);
    expect(() => openRootDir(join(dir, "theirs"))).toThrow(
      /must be root's and writable by no one else \(it is uid 4242's/,
    );
    mkdirSync(join(dir, "open"));
    chmodSync(join(dir, "open"), 0o1777);
    expect(() => openRootDir(join(dir, "open"))).toThrow(/mode 1777/);
    expect(statSync(join(dir, "open")).mode & 0o7777).toBe(0o1777);
    symlinkSync(join(dir, "locked"), join(dir, "link"));
    expect(() => openRootDir(join(dir, "link"))).toThrow(/is a symlink or not a directory/);
  });
});
