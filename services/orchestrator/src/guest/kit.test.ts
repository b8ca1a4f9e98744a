import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { copyFile, mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hasTool, requireTools } from "@banger/common/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { newSshClient } from "../core/ssh2-client.js";
import { dropbearRereadsKeys } from "./kit.js";

const DROPBEAR = "/usr/sbin/dropbear";
const DROPBEARKEY = "/usr/bin/dropbearkey";
requireTools("the host's dropbear (dropbear-bin)", [DROPBEAR, DROPBEARKEY]);

describe("dropbearRereadsKeys", () => {
  it("says yes from 2022.82 on (dropbear re-executes itself per connection), no before and without a version", () => {
    const binary = (text: string) => Buffer.from(`\x7fELF\0…\0SSH-2.0-\0${text}\0…`, "latin1");
    expect(dropbearRereadsKeys(binary("dropbear_2022.83"))).toBe(true);
    expect(dropbearRereadsKeys(binary("dropbear_2022.82"))).toBe(true);
    expect(dropbearRereadsKeys(binary("dropbear_2025.88"))).toBe(true);
    expect(dropbearRereadsKeys(binary("dropbear_2022.81"))).toBe(false);
    expect(dropbearRereadsKeys(binary("dropbear_2020.81"))).toBe(false);
    expect(dropbearRereadsKeys(binary("no version here"))).toBe(false);
  });
});

describe("the host's dropbear", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "banger-kit-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** The host key a server at 127.0.0.1:`port` shows (the connection is dropped at the key). */
  async function hostKeyAt(port: number): Promise<Buffer> {
    const client = await newSshClient();
    return new Promise((resolve, reject) => {
      client.on("error", reject);
      client.connect({
        host: "127.0.0.1",
        port,
        username: "nobody",
        readyTimeout: 10_000,
        hostVerifier: (key: Buffer) => {
          resolve(key);
          return false;
        },
      });
      setTimeout(() => reject(new Error(`no host key from 127.0.0.1:${port}`)), 10_000).unref();
    });
  }

  const freePort = () =>
    new Promise<number>((resolve) => {
      const server = createServer().listen(0, "127.0.0.1", () => {
        const { port } = server.address() as { port: number };
        server.close(() => resolve(port));
      });
    });

  it.skipIf(![DROPBEAR, DROPBEARKEY].every(hasTool))(
    "reads its host key again for each connection when its version says so (what a fork's identity relies on)",
    async () => {
      const rereads = dropbearRereadsKeys(readFileSync(DROPBEAR));
      const [first, second, key] = [join(dir, "first"), join(dir, "second"), join(dir, "host_key")];
      for (const file of [first, second]) execFileSync(DROPBEARKEY, ["-t", "ed25519", "-f", file], { stdio: "ignore" });
      await copyFile(first, key);
      const port = await freePort();
      const server: ChildProcess = spawn(DROPBEAR, ["-F", "-E", "-s", "-r", key, "-p", `127.0.0.1:${port}`], {
        stdio: "ignore",
      });
      try {
        let before: Buffer | undefined;
        for (let tries = 0; before === undefined; tries++) {
          before = await hostKeyAt(port).catch((error: unknown) => {
            if (tries > 50) throw error;
            return new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 100));
          });
        }
        await copyFile(second, key);
        const after = await hostKeyAt(port);
        // The key the running server shows changes with the file exactly when the version check says it does.
        expect(after.equals(before)).toBe(!rereads);
        console.log(`the host's dropbear ${rereads ? "reads" : "does not read"} its host key per connection`);
      } finally {
        server.kill("SIGKILL");
      }
    },
  );
});
