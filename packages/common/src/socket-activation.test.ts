import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { boundPathOfFd, listenFdFromEnv } from "./socket-activation.js";

describe("systemd socket activation", () => {
  it("takes fd 3 only when LISTEN_PID names this process and LISTEN_FDS passes at least one", () => {
    expect(listenFdFromEnv({ LISTEN_PID: "42", LISTEN_FDS: "1" }, 42)).toBe(3);
    // Meant for the parent that was activated, not for us.
    expect(listenFdFromEnv({ LISTEN_PID: "41", LISTEN_FDS: "1" }, 42)).toBeUndefined();
    expect(listenFdFromEnv({ LISTEN_FDS: "1" }, 42)).toBeUndefined();
    expect(listenFdFromEnv({ LISTEN_PID: "42", LISTEN_FDS: "0" }, 42)).toBeUndefined();
    expect(listenFdFromEnv({ LISTEN_PID: "42", LISTEN_FDS: "x" }, 42)).toBeUndefined();
    expect(listenFdFromEnv({}, 42)).toBeUndefined();
  });

  describe("the path of a passed socket", () => {
    let dir: string | undefined;
    let server: Server | undefined;
    afterEach(() => {
      server?.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it("is read from /proc/net/unix by the socket's inode", async () => {
      dir = mkdtempSync(join(tmpdir(), "banger-activation-"));
      const path = join(dir, "listening.sock");
      const listening = createServer();
      server = listening;
      await new Promise<void>((resolve) => listening.listen(path, resolve));
      const fd = (listening as unknown as { _handle: { fd: number } })._handle.fd;
      expect(boundPathOfFd(fd)).toBe(path);
      // Not a socket: no path.
      expect(boundPathOfFd(0)).toBeUndefined();
    });
  });
});
