import { execFileSync } from "node:child_process";
import { link, mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, PermissionDeniedError } from "@banger/common";
import { confinedPath, openConfined } from "./paths.js";

let root: string;
let stateDir: string;
let outside: string;
/** The files here are this process's: it plays the owner. */
const ownerUid = process.getuid?.() ?? 0;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "banger-paths-"));
  stateDir = join(root, "state");
  outside = join(root, "outside");
  await mkdir(join(stateDir, "vms", "box"), { recursive: true });
  await mkdir(outside);
  await writeFile(join(stateDir, "vms", "box", "root.ext4"), "image");
  await writeFile(join(outside, "secret"), "secret");
  await mkdir(join(outside, "vms"));
  await writeFile(join(outside, "vms", "other.ext4"), "other");
  // A symlinked directory component and a symlink file, both pointing outside.
  await symlink(join(outside, "vms"), join(stateDir, "linked"));
  await symlink(join(outside, "secret"), join(stateDir, "link.ext4"));
  // A hard link of a file outside (two links).
  await link(join(outside, "secret"), join(stateDir, "hard.ext4"));
  execFileSync("mkfifo", [join(stateDir, "fifo.ext4")]);
  execFileSync("mknod", [join(stateDir, "null.ext4"), "c", "1", "3"]);
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Runs `openConfined` expecting a refusal; returns the error. */
async function refusal(path: string, write = false): Promise<unknown> {
  try {
    const handle = await openConfined(stateDir, path, { write, ownerUid });
    await handle.close();
  } catch (error) {
    return error;
  }
  throw new Error(`${path} was accepted`);
}

describe("openConfined", () => {
  it("opens a regular, singly-linked file inside the state dir and returns the open file", async () => {
    const path = join(stateDir, "vms", "box", "root.ext4");
    for (const write of [false, true]) {
      const handle = await openConfined(stateDir, path, { write, ownerUid });
      try {
        expect(handle.fd).toBeGreaterThan(2);
        const { bytesRead, buffer } = await handle.read(Buffer.alloc(5), 0, 5, 0);
        expect(buffer.subarray(0, bytesRead).toString()).toBe("image");
      } finally {
        await handle.close();
      }
    }
  });

  it.each([
    [
      "a path outside the state dir",
      (): string => join(outside, "secret"),
      PermissionDeniedError,
      "PATH_OUTSIDE_STATE_DIR",
    ],
    ["/dev/null", (): string => "/dev/null", PermissionDeniedError, "PATH_OUTSIDE_STATE_DIR"],
    ["/proc/self/fd/0", (): string => "/proc/self/fd/0", PermissionDeniedError, "PATH_OUTSIDE_STATE_DIR"],
    ["the state dir itself", (): string => stateDir, PermissionDeniedError, "PATH_OUTSIDE_STATE_DIR"],
    [
      "a sibling sharing the prefix",
      (): string => `${stateDir}x/a.ext4`,
      PermissionDeniedError,
      "PATH_OUTSIDE_STATE_DIR",
    ],
    ["a `..` component", (): string => `${stateDir}/../outside/secret`, InvalidArgumentError, "INVALID_PATH"],
    [
      "a `..` that stays inside",
      (): string => `${stateDir}/vms/../vms/box/root.ext4`,
      InvalidArgumentError,
      "INVALID_PATH",
    ],
    ["a `.` component", (): string => `${stateDir}/./vms/box/root.ext4`, InvalidArgumentError, "INVALID_PATH"],
    ["a `//`", (): string => `${stateDir}/vms//box/root.ext4`, InvalidArgumentError, "INVALID_PATH"],
    ["a trailing slash", (): string => `${stateDir}/vms/box/`, InvalidArgumentError, "INVALID_PATH"],
    ["a relative path", (): string => "vms/box/root.ext4", InvalidArgumentError, "INVALID_PATH"],
    ["an empty path", (): string => "", InvalidArgumentError, "INVALID_PATH"],
    ["a NUL", (): string => `${stateDir}/vms/box/root.ext4\0x`, InvalidArgumentError, "INVALID_PATH"],
    ["a newline", (): string => `${stateDir}/vms/box/root\n.ext4`, InvalidArgumentError, "INVALID_PATH"],
    ["an over-long path", (): string => `${stateDir}/${"a".repeat(5000)}`, InvalidArgumentError, "INVALID_PATH"],
    ["a symlinked component", (): string => `${stateDir}/linked/other.ext4`, PermissionDeniedError, "SYMLINK_IN_PATH"],
    ["a symlink file", (): string => `${stateDir}/link.ext4`, PermissionDeniedError, "SYMLINK_IN_PATH"],
    ["a hard-linked file", (): string => `${stateDir}/hard.ext4`, PermissionDeniedError, "HARD_LINKED_FILE"],
    ["a FIFO", (): string => `${stateDir}/fifo.ext4`, InvalidArgumentError, "NOT_REGULAR_FILE"],
    ["a device node", (): string => `${stateDir}/null.ext4`, InvalidArgumentError, "NOT_REGULAR_FILE"],
    ["a directory", (): string => `${stateDir}/vms/box`, InvalidArgumentError, "NOT_REGULAR_FILE"],
    [
      "a file used as a directory",
      (): string => `${stateDir}/vms/box/root.ext4/x`,
      InvalidArgumentError,
      "NOT_A_DIRECTORY",
    ],
    ["a missing file", (): string => `${stateDir}/vms/box/missing.ext4`, NotFoundError, "PATH_NOT_FOUND"],
  ] as const)("refuses %s", async (_, path, kind, reason) => {
    for (const write of [false, true]) {
      const error = await refusal(path(), write);
      expect(error).toBeInstanceOf(kind);
      expect(error).toMatchObject({ reason });
    }
  });

  it("refuses a file that is not the owner's, for reading and for writing (PERMISSION_DENIED NOT_OWNERS_FILE)", async () => {
    const path = join(stateDir, "vms", "box", "root.ext4");
    for (const write of [false, true]) {
      const error = await openConfined(stateDir, path, { write, ownerUid: ownerUid + 1 }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(PermissionDeniedError);
      expect(error).toMatchObject({ reason: "NOT_OWNERS_FILE" });
    }
  });

  it("refuses a FIFO without blocking, even one with no writer", async () => {
    const started = Date.now();
    await expect(openConfined(stateDir, `${stateDir}/fifo.ext4`, { write: false, ownerUid })).rejects.toMatchObject({
      reason: "NOT_REGULAR_FILE",
    });
    expect(Date.now() - started).toBeLessThan(2000);
  }, 5000);

  it("refuses everything when the state dir is not at its canonical path", async () => {
    const linkedState = join(root, "state-link");
    await symlink(stateDir, linkedState);
    const error = await openConfined(linkedState, `${linkedState}/vms/box/root.ext4`, { write: false, ownerUid }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(FailedPreconditionError);
    expect(error).toMatchObject({ reason: "STATE_DIR_NOT_CANONICAL" });
  });
});

describe("confinedPath", () => {
  it("accepts a normalised path inside the state dir without touching the host", () => {
    expect(confinedPath("/var/lib/banger", "/var/lib/banger/vms/a/root.ext4")).toBe("/var/lib/banger/vms/a/root.ext4");
    expect(confinedPath("/var/lib/banger", "/var/lib/banger/x (deleted)")).toBe("/var/lib/banger/x (deleted)");
  });

  it("refuses the same shapes openConfined refuses as text", () => {
    expect(() => confinedPath("/var/lib/banger", "/var/lib/bangerx/a")).toThrow(PermissionDeniedError);
    expect(() => confinedPath("/var/lib/banger", "/var/lib/banger/a/../b")).toThrow(InvalidArgumentError);
    expect(() => confinedPath("/var/lib/banger", "/proc/self/fd/3")).toThrow(PermissionDeniedError);
  });
});
