import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { chmod, chown, link, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EXT4_TOOLS, requireTools } from "@banger/common/testing";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  HostCommandError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
} from "@banger/common";
import { helperConfig, type HelperConfig } from "../config.js";
import { createHostRunner, type RunResult, type Runner } from "@banger/common";
import { createDiskOps, type GuestFileSpec } from "./disk.js";

let root: string;
let stateDir: string;
let config: HelperConfig;
/** The owner the helper works for: the files it may open are this uid's. */
const OWNER = 1000;
/** Loop devices the tests attached outside the state dir (to show they are not banger's). */
const foreignLoops: string[] = [];
const HAVE_LOOP_TOOLS = requireTools("loop devices", ["losetup", "mkfs.ext4"]).length === 0;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "banger-disk-"));
  stateDir = join(root, "state");
  await mkdir(join(stateDir, "images"), { recursive: true });
  await mkdir(join(root, "outside"));
  config = helperConfig({ stateDir, runtimeDir: join(root, "run"), ownerUid: OWNER, ownerGid: OWNER });
});

/** Detaches every loop device backed by a file under this test's temp dir, even after a failure. */
function detachOurLoops(): void {
  if (!HAVE_LOOP_TOOLS) return; // nothing was attached
  const failures: string[] = [];
  for (const loop of [...losetupList().filter((l) => l.backFile.startsWith(`${root}/`)), ...foreignLoops.splice(0)]) {
    const device = typeof loop === "string" ? loop : loop.name;
    try {
      execFileSync("losetup", ["-d", device], { stdio: "pipe" });
    } catch (error) {
      if (losetupList().some((l) => l.name === device)) failures.push(`${device}: ${String(error)}`);
    }
  }
  if (failures.length > 0) throw new Error(`could not detach ${failures.join("; ")}`);
}

afterEach(detachOurLoops);

afterAll(async () => {
  detachOurLoops();
  await rm(root, { recursive: true, force: true });
});

interface LosetupEntry {
  name: string;
  backFile: string;
  ro: boolean;
}

/** What the kernel says, through losetup itself (independent of the code under test). */
function losetupList(): LosetupEntry[] {
  const out = execFileSync("losetup", ["-l", "-J"], { encoding: "utf8" });
  if (out.trim() === "") return [];
  const parsed = JSON.parse(out) as { loopdevices: { name: string; "back-file": string | null; ro: boolean }[] };
  return parsed.loopdevices.map((l) => ({ name: l.name, backFile: l["back-file"] ?? "", ro: l.ro }));
}

/** The loop devices backed by files in the state dir, as one comparable string. */
function stateLoops(): string {
  return JSON.stringify(losetupList().filter((l) => l.backFile.startsWith(`${stateDir}/`)));
}

/** An ext4 image, the owner's unless `owner` says otherwise. */
function makeExt4(path: string, mib: number, populateFrom?: string, owner = OWNER): void {
  execFileSync("truncate", ["-s", `${mib}M`, path]);
  execFileSync("mkfs.ext4", ["-q", "-F", ...(populateFrom ? ["-d", populateFrom] : []), path], { stdio: "pipe" });
  execFileSync("chown", [`${owner}:${owner}`, path]);
}

async function sha256(path: string): Promise<string> {
  return createHash("sha256")
    .update(await readFile(path))
    .digest("hex");
}

async function caught(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected a refusal, got success");
}

describe.skipIf(!HAVE_LOOP_TOOLS)("loop devices (real losetup)", () => {
  const ops = () => createDiskOps({ runner: createHostRunner(), config });

  it("attaches a real ext4 file, shows it in losetup -l and listLoops, and detaches it idempotently", async () => {
    const image = join(stateDir, "images", "base.ext4");
    makeExt4(image, 4);
    const disk = ops();

    const { device } = await disk.attachLoop({ path: image, readOnly: false });
    expect(device).toMatch(/^\/dev\/loop[0-9]+$/);
    expect(losetupList()).toContainEqual({ name: device, backFile: image, ro: false });
    expect(await disk.listLoops()).toContainEqual({ device, backingFile: image, readOnly: false });

    expect(await disk.detachLoop({ device, path: image })).toEqual({ existed: true });
    expect(losetupList().some((l) => l.name === device && l.backFile === image)).toBe(false);
    expect(await disk.listLoops()).toEqual([]);
    expect(await disk.detachLoop({ device, path: image })).toEqual({ existed: false });
  });

  it("attaches read-only when asked", async () => {
    const image = join(stateDir, "images", "ro.ext4");
    makeExt4(image, 4);
    const disk = ops();
    const { device } = await disk.attachLoop({ path: image, readOnly: true });
    expect(losetupList()).toContainEqual({ name: device, backFile: image, ro: true });
    expect(await disk.listLoops()).toContainEqual({ device, backingFile: image, readOnly: true });
  });

  it("refuses to detach a loop device whose backing file is not the one named, and leaves it attached", async () => {
    const image = join(stateDir, "images", "keep.ext4");
    const other = join(stateDir, "images", "other.ext4");
    makeExt4(image, 4);
    makeExt4(other, 4);
    const disk = ops();
    const { device } = await disk.attachLoop({ path: image, readOnly: false });
    const before = stateLoops();

    const wrong = await caught(disk.detachLoop({ device, path: other }));
    expect(wrong).toBeInstanceOf(PermissionDeniedError);
    expect(wrong).toMatchObject({ reason: "NOT_BANGERS" });
    const outside = await caught(disk.detachLoop({ device, path: join(root, "outside", "keep.ext4") }));
    expect(outside).toMatchObject({ reason: "PATH_OUTSIDE_STATE_DIR" });

    expect(stateLoops()).toBe(before);
    expect(losetupList()).toContainEqual({ name: device, backFile: image, ro: false });
  });

  it("never lists or detaches a loop device backed by a file outside the state dir", async () => {
    const foreign = join(root, "outside", "foreign.img");
    makeExt4(foreign, 4);
    const device = execFileSync("losetup", ["--find", "--show", foreign], { encoding: "utf8" }).trim();
    foreignLoops.push(device);
    const disk = ops();

    expect((await disk.listLoops()).some((l) => l.device === device)).toBe(false);
    const refused = await caught(disk.detachLoop({ device, path: join(stateDir, "images", "foreign.img") }));
    expect(refused).toMatchObject({ reason: "NOT_BANGERS" });
    expect(losetupList()).toContainEqual({ name: device, backFile: foreign, ro: false });
  });

  it("refuses bad files to attach before running losetup, attaching nothing", async () => {
    const outsideFile = join(root, "outside", "secret.ext4");
    makeExt4(outsideFile, 4);
    await mkdir(join(stateDir, "bad"), { recursive: true });
    await symlink(outsideFile, join(stateDir, "bad", "link.ext4"));
    await symlink(join(root, "outside"), join(stateDir, "bad", "dirlink"));
    await link(outsideFile, join(stateDir, "bad", "hard.ext4"));
    execFileSync("mkfifo", [join(stateDir, "bad", "fifo.ext4")]);
    execFileSync("mknod", [join(stateDir, "bad", "null.ext4"), "c", "1", "3"]);
    const attempts: [string, new (...args: never[]) => Error, string][] = [
      [outsideFile, PermissionDeniedError, "PATH_OUTSIDE_STATE_DIR"],
      ["/dev/null", PermissionDeniedError, "PATH_OUTSIDE_STATE_DIR"],
      ["/proc/self/fd/0", PermissionDeniedError, "PATH_OUTSIDE_STATE_DIR"],
      [`${stateDir}/images/../../outside/secret.ext4`, InvalidArgumentError, "INVALID_PATH"],
      ["images/base.ext4", InvalidArgumentError, "INVALID_PATH"],
      [join(stateDir, "bad", "link.ext4"), PermissionDeniedError, "SYMLINK_IN_PATH"],
      [join(stateDir, "bad", "dirlink", "secret.ext4"), PermissionDeniedError, "SYMLINK_IN_PATH"],
      [join(stateDir, "bad", "hard.ext4"), PermissionDeniedError, "HARD_LINKED_FILE"],
      [join(stateDir, "bad", "fifo.ext4"), InvalidArgumentError, "NOT_REGULAR_FILE"],
      [join(stateDir, "bad", "null.ext4"), InvalidArgumentError, "NOT_REGULAR_FILE"],
      [join(stateDir, "bad"), InvalidArgumentError, "NOT_REGULAR_FILE"],
      [join(stateDir, "bad", "missing.ext4"), NotFoundError, "PATH_NOT_FOUND"],
    ];
    // Loops on anything these attempts could have reached (other tests' loops elsewhere may come and go).
    const reachable = () =>
      JSON.stringify(
        losetupList().filter((l) => [`${root}/`, "/dev/", "/proc/"].some((prefix) => l.backFile.startsWith(prefix))),
      );
    const before = reachable();
    const disk = ops();
    for (const [path, kind, reason] of attempts) {
      for (const readOnly of [true, false]) {
        const error = await caught(disk.attachLoop({ path, readOnly }));
        expect(error, path).toBeInstanceOf(kind);
        expect(error, path).toMatchObject({ reason });
      }
    }
    expect(reachable()).toBe(before);
  });

  it("refuses a file in the state dir that is not the owner's (a root-owned log), attaching nothing", async () => {
    await mkdir(join(stateDir, "logs"), { recursive: true });
    const log = join(stateDir, "logs", "privileged.jsonl");
    await writeFile(log, "root's log\n", { mode: 0o600 });
    const image = join(stateDir, "images", "root-owned.ext4");
    makeExt4(image, 4, undefined, 0);
    const before = stateLoops();
    for (const path of [log, image]) {
      for (const readOnly of [true, false]) {
        const error = await caught(ops().attachLoop({ path, readOnly }));
        expect(error, path).toBeInstanceOf(PermissionDeniedError);
        expect(error, path).toMatchObject({ reason: "NOT_OWNERS_FILE" });
      }
    }
    expect(stateLoops()).toBe(before);
  });

  it.each([
    "/dev/sda",
    "/dev/loop",
    "/dev/loop12345",
    "/dev/loop0/../sda",
    "/dev/loop-control",
    "loop0",
    " /dev/loop0",
  ])("refuses to detach %j", async (device) => {
    const error = await caught(ops().detachLoop({ device, path: join(stateDir, "images", "base.ext4") }));
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error).toMatchObject({ reason: "INVALID_LOOP_DEVICE" });
  });
});

describe.skipIf(requireTools("a VM's root filesystem", EXT4_TOOLS).length > 0)(
  "a VM's root filesystem (real ext4, the clone strategy's root disk)",
  () => {
    const vmId = "vm1";
    let image: string;
    const disk = () => createDiskOps({ runner: createHostRunner(), config });

    function debugfsRequest(request: string): string {
      return execFileSync("debugfs", ["-R", request, image], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    }

    function guestStat(
      path: string,
    ): { mode: string; user: number; group: number; size: number; type: string } | undefined {
      const out = debugfsRequest(`stat ${path}`);
      const head = /Type: (\S+)\s+Mode:\s+([0-7]+)/.exec(out);
      // debugfs prints ids as signed 32-bit numbers.
      const owner = /User:\s+(-?\d+)\s+Group:\s+(-?\d+).*Size:\s+(\d+)/.exec(out);
      if (!head?.[1] || !head[2] || !owner) return undefined;
      const id = (text: string | undefined) => Number(text) >>> 0;
      return { type: head[1], mode: head[2], user: id(owner[1]), group: id(owner[2]), size: Number(owner[3]) };
    }

    async function guestTempDirs(): Promise<string[]> {
      return (await readdir(tmpdir())).filter((n) => n.startsWith("banger-guest-"));
    }

    beforeEach(async () => {
      const seed = join(root, "seed");
      await rm(seed, { recursive: true, force: true });
      await mkdir(join(seed, "etc"), { recursive: true });
      await writeFile(join(seed, "etc", "hostname"), "old-name\n");
      await mkdir(join(stateDir, "vms", vmId), { recursive: true });
      image = join(stateDir, "vms", vmId, "root.ext4");
      await rm(image, { force: true });
      makeExt4(image, 8, seed);
    });

    it("runs e2fsck -fy on the VM's root disk: 0 when clean, 1 after fixing, and reports the tail", async () => {
      const clean = await disk().checkFilesystem({ vmId });
      expect(clean.exitCode).toBe(0);
      expect(clean.outputTail).toMatch(/Pass 5/);
      expect(clean.outputTail).toMatch(/\d+\/\d+ files/);

      execFileSync("debugfs", ["-w", "-R", "sif /etc/hostname links_count 5", image], { stdio: "pipe" });
      const fixed = await disk().checkFilesystem({ vmId });
      expect(fixed.exitCode).toBe(1);
      expect(fixed.outputTail).toMatch(/FILE SYSTEM WAS MODIFIED/);
      expect((await disk().checkFilesystem({ vmId })).exitCode).toBe(0);
    });

    it("reports an unrepairable filesystem as a HostCommandError with e2fsck's code", async () => {
      await mkdir(join(stateDir, "vms", "vm2"), { recursive: true });
      const junk = join(stateDir, "vms", "vm2", "root.ext4");
      await writeFile(junk, Buffer.alloc(4 * 1024 * 1024));
      await chown(junk, OWNER, OWNER);
      const error = await caught(disk().checkFilesystem({ vmId: "vm2" }));
      expect(error).toBeInstanceOf(HostCommandError);
      expect((error as HostCommandError).exitCode).toBe(8);
    });

    it("refuses a VM with no root device, or a bad id, before running anything", async () => {
      const none = await caught(disk().checkFilesystem({ vmId: "vm-none" }));
      expect(none).toBeInstanceOf(FailedPreconditionError);
      expect(none).toMatchObject({ reason: "VM_DISK_NOT_ATTACHED" });
      for (const vmId of ["", "VM1", "../vm1", "vm1/..", "vm 1", "vm%1", "vmé", "a".repeat(33)]) {
        expect(await caught(disk().checkFilesystem({ vmId }))).toMatchObject({ reason: "INVALID_VM_ID" });
        expect(await caught(disk().writeGuestFiles({ vmId, files: [] }))).toMatchObject({ reason: "INVALID_VM_ID" });
      }
    });

    it("fails GUEST_WRITE_FAILED when the write session wrote nothing, or could not close, though it exited 0", async () => {
      const real = createHostRunner();
      const writeSession = (fake: Runner["run"]): Runner => ({
        run: (argv, options) =>
          argv[0] === "debugfs" && argv[1] === "-w" ? fake(argv, options) : real.run(argv, options),
      });
      const file: GuestFileSpec = { path: "/etc/hostname", content: Buffer.from("box\n"), mode: 0o644, uid: 0, gid: 0 };
      // A session that does nothing at all: its read-back shows nothing either.
      const idle = writeSession((_argv, options) => real.run(["true"], options));
      // A session that wrote everything, then failed to flush it when it closed.
      const unflushed = writeSession(async (argv, options) => {
        const result = await real.run(argv, options);
        return { ...result, stderr: `${result.stderr}ext2fs_close: Short write trying to write a block\n` };
      });
      for (const [runner, message] of [
        [idle, "/etc/hostname: missing"],
        [unflushed, "closing the file system: ext2fs_close: Short write"],
      ] as const) {
        const error = await caught(createDiskOps({ runner, config }).writeGuestFiles({ vmId, files: [file] }));
        expect(error).toMatchObject({ reason: "GUEST_WRITE_FAILED" });
        expect((error as Error).message).toContain(message);
      }
    });

    it("writes files with content, mode (setuid too) and owner in one batch, creating parents, and removes its temp dir", async () => {
      const blob = randomBytes(1024 * 1024);
      const tempBefore = await guestTempDirs();
      const files: GuestFileSpec[] = [
        { path: "/etc/hostname", content: Buffer.from("box\n"), mode: 0o4755, uid: 1000, gid: 1000 },
        {
          path: "/root/.ssh/authorized_keys",
          content: Buffer.from("ssh-ed25519 AAAAC3 test\n"),
          mode: 0o600,
          uid: 0,
          gid: 0,
        },
        { path: "/opt/banger/blob.bin", content: blob, mode: 0o644, uid: 4294967294, gid: 65534 },
        { path: "/etc/empty", content: new Uint8Array(0), mode: 0, uid: 0, gid: 0 },
      ];
      expect(await disk().writeGuestFiles({ vmId, files })).toEqual({ written: 4 });

      // Verified with debugfs, independently of the code under test.
      expect(guestStat("/etc/hostname")).toEqual({ type: "regular", mode: "04755", user: 1000, group: 1000, size: 4 });
      expect(debugfsRequest("cat /etc/hostname")).toBe("box\n");
      expect(guestStat("/root/.ssh/authorized_keys")).toMatchObject({ type: "regular", mode: "0600", user: 0 });
      expect(guestStat("/root/.ssh")).toMatchObject({ type: "directory", mode: "0755" });
      expect(guestStat("/opt/banger/blob.bin")).toEqual({
        type: "regular",
        mode: "0644",
        user: 4294967294,
        group: 65534,
        size: blob.length,
      });
      const dumped = join(root, "dumped.bin");
      execFileSync("debugfs", ["-R", `dump /opt/banger/blob.bin ${dumped}`, image], { stdio: "pipe" });
      expect((await readFile(dumped)).equals(blob)).toBe(true);
      expect(guestStat("/etc/empty")).toMatchObject({ type: "regular", mode: "0000", size: 0 });

      // Overwriting is fine, and the filesystem stays consistent.
      await disk().writeGuestFiles({
        vmId,
        files: [{ path: "/etc/hostname", content: Buffer.from("box2\n"), mode: 0o644, uid: 0, gid: 0 }],
      });
      expect(debugfsRequest("cat /etc/hostname")).toBe("box2\n");
      expect(guestStat("/etc/hostname")).toMatchObject({ mode: "0644", user: 0, group: 0 });
      expect(await guestTempDirs()).toEqual(tempBefore);
      execFileSync("e2fsck", ["-fn", image], { stdio: "pipe" });
    });

    it("refuses bad guest files before touching the disk: the image stays byte-for-byte the same", async () => {
      const good = { path: "/etc/ok", content: Buffer.from("x"), mode: 0o644, uid: 0, gid: 0 };
      const bad: [Partial<GuestFileSpec>, string][] = [
        [{ path: "/etc/host name" }, "UNSUPPORTED_GUEST_PATH"],
        [{ path: '/etc/"x"' }, "UNSUPPORTED_GUEST_PATH"],
        [{ path: "/etc/../etc/shadow" }, "INVALID_GUEST_PATH"],
        [{ path: "/etc/x\nrm /etc/hostname" }, "INVALID_GUEST_PATH"],
        [{ path: "/etc/x\0" }, "INVALID_GUEST_PATH"],
        [{ path: "/" }, "INVALID_GUEST_PATH"],
        [{ path: "etc/x" }, "INVALID_GUEST_PATH"],
        [{ path: `/${"a/".repeat(2048)}b` }, "INVALID_GUEST_PATH"],
        [{ content: Buffer.alloc(1024 * 1024 + 1) }, "FILE_TOO_LARGE"],
        [{ mode: 0o10000 }, "INVALID_MODE"],
        [{ mode: -1 }, "INVALID_MODE"],
        [{ mode: 1.5 }, "INVALID_MODE"],
        [{ uid: 2 ** 32 - 1 }, "INVALID_OWNER"],
        [{ gid: -1 }, "INVALID_OWNER"],
        [{ uid: Number.NaN }, "INVALID_OWNER"],
      ];
      const before = await sha256(image);
      for (const [change, reason] of bad) {
        // A good file first: validation covers the whole request before anything runs.
        const error = await caught(disk().writeGuestFiles({ vmId, files: [good, { ...good, ...change }] }));
        expect(error, JSON.stringify(change)).toBeInstanceOf(InvalidArgumentError);
        expect(error, JSON.stringify(change)).toMatchObject({ reason });
      }
      const tooMany = Array.from({ length: 257 }, (_, i) => ({ ...good, path: `/f${i}` }));
      expect(await caught(disk().writeGuestFiles({ vmId, files: tooMany }))).toMatchObject({
        reason: "TOO_MANY_FILES",
      });
      expect(await caught(disk().removeGuestFiles({ vmId, paths: ["/etc/hostname", "/etc/a b"] }))).toMatchObject({
        reason: "UNSUPPORTED_GUEST_PATH",
      });
      expect(await sha256(image)).toBe(before);
      expect(debugfsRequest("cat /etc/hostname")).toBe("old-name\n");
      expect(guestStat("/etc/ok")).toBeUndefined();
    });

    it("refuses to write over a guest directory, changing nothing", async () => {
      const before = await sha256(image);
      const error = await caught(
        disk().writeGuestFiles({
          vmId,
          files: [{ path: "/etc", content: Buffer.from("x"), mode: 0o644, uid: 0, gid: 0 }],
        }),
      );
      expect(error).toMatchObject({ reason: "GUEST_PATH_IS_DIRECTORY" });
      const under = await caught(
        disk().writeGuestFiles({
          vmId,
          files: [{ path: "/etc/hostname/x", content: Buffer.from("x"), mode: 0o644, uid: 0, gid: 0 }],
        }),
      );
      expect(under).toMatchObject({ reason: "GUEST_PARENT_NOT_DIRECTORY" });
      expect(await sha256(image)).toBe(before);
    });

    it("removes guest files, counting only those that existed; removing again removes nothing", async () => {
      await disk().writeGuestFiles({
        vmId,
        files: [{ path: "/root/.ssh/authorized_keys", content: Buffer.from("k\n"), mode: 0o600, uid: 0, gid: 0 }],
      });
      const paths = ["/etc/hostname", "/root/.ssh/authorized_keys", "/nope/missing", "/etc/hostname"];
      expect(await disk().removeGuestFiles({ vmId, paths })).toEqual({ removed: 2 });
      expect(guestStat("/etc/hostname")).toBeUndefined();
      expect(guestStat("/root/.ssh/authorized_keys")).toBeUndefined();
      expect(guestStat("/root/.ssh")).toMatchObject({ type: "directory" });
      expect(await disk().removeGuestFiles({ vmId, paths })).toEqual({ removed: 0 });
      execFileSync("e2fsck", ["-fn", image], { stdio: "pipe" });

      const dir = await caught(disk().removeGuestFiles({ vmId, paths: ["/root/.ssh"] }));
      expect(dir).toMatchObject({ reason: "GUEST_PATH_IS_DIRECTORY" });
      expect(guestStat("/root/.ssh")).toMatchObject({ type: "directory" });
    });

    it("runs e2fsck and debugfs as the owner: a root disk the owner may only read is not written (root could)", async () => {
      await chmod(image, 0o400);
      const before = await sha256(image);
      const fsck = await caught(disk().checkFilesystem({ vmId }));
      expect(fsck).toBeInstanceOf(PermissionDeniedError);
      expect(fsck).toMatchObject({ reason: "OWNER_CANNOT_OPEN_DISK" });
      const file = { path: "/etc/hostname", content: Buffer.from("box\n"), mode: 0o644, uid: 0, gid: 0 };
      const write = await caught(disk().writeGuestFiles({ vmId, files: [file] }));
      expect(write).toMatchObject({ reason: "OWNER_CANNOT_OPEN_DISK" });
      const remove = await caught(disk().removeGuestFiles({ vmId, paths: ["/etc/hostname"] }));
      expect(remove).toMatchObject({ reason: "OWNER_CANNOT_OPEN_DISK" });
      expect(await sha256(image)).toBe(before);
      expect(debugfsRequest("cat /etc/hostname")).toBe("old-name\n");
    });

    it("refuses a root disk that is not the owner's, running nothing on it", async () => {
      await chown(image, 0, 0);
      const before = await sha256(image);
      // One at a time: a call started before the previous one is awaited would reject unhandled meanwhile.
      for (const attempt of [
        () => disk().checkFilesystem({ vmId }),
        () =>
          disk().writeGuestFiles({
            vmId,
            files: [{ path: "/etc/hostname", content: Buffer.from("x"), mode: 0o644, uid: 0, gid: 0 }],
          }),
        () => disk().removeGuestFiles({ vmId, paths: ["/etc/hostname"] }),
      ]) {
        const error = await caught(attempt());
        expect(error).toBeInstanceOf(PermissionDeniedError);
        expect(error).toMatchObject({ reason: "NOT_OWNERS_FILE" });
      }
      expect(await sha256(image)).toBe(before);
    });
  },
);

describe("dm-snapshots (scripted runner: this machine has no device-mapper)", () => {
  console.log("device-mapper is absent on this machine: dm-snapshot tested through a scripted runner");

  const origin = "/dev/loop0";
  const cow = "/dev/loop1";
  let sys: string;
  let dev: string;
  let noDmDev: string;

  beforeAll(async () => {
    const fake = join(root, "fake");
    sys = join(fake, "sys");
    dev = join(fake, "dev");
    noDmDev = join(fake, "dev-without-dm");
    const loops: [string, string | undefined, string][] = [
      ["loop0", `${stateDir}/images/debian.ext4`, "1"],
      ["loop1", `${stateDir}/vms/vm1/cow`, "0"],
      ["loop2", "/home/someone/other.img", "0"],
      ["loop3", undefined, "0"], // not attached: no loop/ directory
    ];
    for (const [name, backing, ro] of loops) {
      await mkdir(join(sys, "block", name), { recursive: true });
      await writeFile(join(sys, "block", name, "ro"), `${ro}\n`);
      if (backing !== undefined) {
        await mkdir(join(sys, "block", name, "loop"));
        await writeFile(join(sys, "block", name, "loop", "backing_file"), `${backing}\n`);
      }
    }
    await mkdir(join(dev, "mapper"), { recursive: true });
    // The device-mapper driver, as the kernel lists it among its misc devices.
    await mkdir(join(fake, "proc"), { recursive: true });
    await writeFile(join(fake, "proc", "misc"), "183 hw_random\n236 device-mapper\n 60 loop-control\n");
    await writeFile(join(dev, "mapper", "control"), "");
    await mkdir(noDmDev);
  });

  /**
   * A fake host with device-mapper: dm devices as a name → uuid map, every
   * argv recorded, and a failure injected at the first command `failAt` matches.
   */
  function fakeHost(failAt?: (argv: readonly string[]) => boolean) {
    const devices = new Map<string, string>();
    const calls: string[][] = [];
    const ok = (stdout = ""): RunResult => ({ code: 0, stdout, stderr: "" });
    const runner: Runner = {
      run(argv) {
        calls.push([...argv]);
        if (failAt?.(argv)) return Promise.reject(new HostCommandError(argv, 1, "injected failure"));
        const [command, ...args] = argv;
        const key = `${command} ${args.slice(0, -1).join(" ")}`;
        const last = args.at(-1) ?? "";
        if (command === "blockdev" && args[0] === "--getsz") return Promise.resolve(ok("8388608\n"));
        if (command === "dmsetup" && args[0] === "create" && args[1] !== undefined && args[3] !== undefined) {
          if (devices.has(args[1])) return Promise.reject(new HostCommandError(argv, 1, "already exists"));
          devices.set(args[1], args[3]);
          return Promise.resolve(ok());
        }
        if (key === "dmsetup info -c --noheadings -o uuid") {
          const uuid = devices.get(last);
          if (uuid === undefined) {
            return Promise.reject(new HostCommandError(argv, 1, "Device does not exist.\nCommand failed."));
          }
          return Promise.resolve(ok(`${uuid}\n`));
        }
        if (key === "dmsetup info -c --noheadings -o name,uuid --separator") {
          const lines = [...devices].map(([n, u]) => `${n},${u}\n`).join("");
          return Promise.resolve(ok(lines || "No devices found\n"));
        }
        if (command === "dmsetup" && args[0] === "remove") {
          if (!devices.delete(last)) return Promise.reject(new HostCommandError(argv, 1, "No such device or address"));
          return Promise.resolve(ok());
        }
        if (command === "chown") return Promise.resolve(ok());
        if (command === "e2fsck") return Promise.resolve({ code: 0, stdout: `${last}: clean\n`, stderr: "" });
        return Promise.reject(new Error(`unexpected command: ${argv.join(" ")}`));
      },
    };
    return { devices, calls, runner };
  }

  const ops = (runner: Runner, devRoot = dev) =>
    createDiskOps({ runner, config, sysfsRoot: sys, devRoot, procRoot: join(root, "fake", "proc") });

  it("creates the snapshot with banger's name and uuid and hands the node to the owner", async () => {
    const host = fakeHost();
    const result = await ops(host.runner).createSnapshot({ vmId: "vm1", originDevice: origin, cowDevice: cow });
    const node = `${dev}/mapper/bgr-vm1-root`;
    expect(result).toEqual({ name: "bgr-vm1-root", device: node });
    expect(host.calls).toEqual([
      ["dmsetup", "info", "-c", "--noheadings", "-o", "uuid", "bgr-vm1-root"],
      ["blockdev", "--getsz", "/dev/loop0"],
      [
        "dmsetup",
        "create",
        "bgr-vm1-root",
        "--uuid",
        "BANGER-vm1",
        "--table",
        "0 8388608 snapshot /dev/loop0 /dev/loop1 P 8",
      ],
      ["chown", "1000:1000", node],
    ]);
    expect([...host.devices]).toEqual([["bgr-vm1-root", "BANGER-vm1"]]);
    expect(await ops(host.runner).listSnapshots()).toEqual([
      { name: "bgr-vm1-root", uuid: "BANGER-vm1", vmId: "vm1", device: node },
    ]);
  });

  it.each([
    ["blockdev", false],
    ["create", false],
    ["chown", true],
  ] as const)("a failure at %s leaves no dm device behind", async (step, undone) => {
    const host = fakeHost((argv) => argv[0] === step || argv[1] === step);
    const error = await caught(ops(host.runner).createSnapshot({ vmId: "vm1", originDevice: origin, cowDevice: cow }));
    expect(error).toBeInstanceOf(HostCommandError);
    expect(host.devices.size).toBe(0);
    expect(host.calls.some((c) => c[0] === "dmsetup" && c[1] === "remove")).toBe(undone);
    if (undone) expect(host.calls.at(-1)).toEqual(["dmsetup", "remove", "bgr-vm1-root"]);
  });

  it("keeps the undo's own failure in the error when undoing fails too", async () => {
    const host = fakeHost((argv) => argv[0] === "chown" || argv[1] === "remove");
    const error = await caught(ops(host.runner).createSnapshot({ vmId: "vm1", originDevice: origin, cowDevice: cow }));
    expect(error).toBeInstanceOf(HostCommandError);
    expect((error as Error).message).toMatch(/chown.*undoing the earlier steps failed: dmsetup remove bgr-vm1-root/s);
  });

  it("refuses an existing device: banger's as already existing, another's as not banger's", async () => {
    const host = fakeHost();
    host.devices.set("bgr-vm1-root", "BANGER-vm1");
    const again = await caught(ops(host.runner).createSnapshot({ vmId: "vm1", originDevice: origin, cowDevice: cow }));
    expect(again).toBeInstanceOf(AlreadyExistsError);
    host.devices.set("bgr-vm1-root", "LVM-someone-else");
    const foreign = await caught(
      ops(host.runner).createSnapshot({ vmId: "vm1", originDevice: origin, cowDevice: cow }),
    );
    expect(foreign).toMatchObject({ reason: "NOT_BANGERS" });
    expect(host.calls.every((c) => c[1] === "info")).toBe(true);
    expect([...host.devices]).toEqual([["bgr-vm1-root", "LVM-someone-else"]]);
  });

  it.each([
    [{ vmId: "VM1" }, InvalidArgumentError, "INVALID_VM_ID"],
    [{ vmId: "../x" }, InvalidArgumentError, "INVALID_VM_ID"],
    [{ originDevice: "/dev/sda" }, InvalidArgumentError, "INVALID_LOOP_DEVICE"],
    [{ cowDevice: "/dev/mapper/x" }, InvalidArgumentError, "INVALID_LOOP_DEVICE"],
    [{ cowDevice: origin }, InvalidArgumentError, "SAME_DEVICE"],
    [{ originDevice: "/dev/loop2" }, PermissionDeniedError, "NOT_BANGERS"],
    [{ cowDevice: "/dev/loop3" }, FailedPreconditionError, "LOOP_NOT_ATTACHED"],
    [{ cowDevice: "/dev/loop99" }, FailedPreconditionError, "LOOP_NOT_ATTACHED"],
  ] as const)("refuses %j before running any command", async (change, kind, reason) => {
    const host = fakeHost();
    const error = await caught(
      ops(host.runner).createSnapshot({ vmId: "vm1", originDevice: origin, cowDevice: cow, ...change }),
    );
    expect(error).toBeInstanceOf(kind);
    expect(error).toMatchObject({ reason });
    expect(host.calls).toEqual([]);
  });

  it("removes only banger's device, after checking its uuid; removing twice is fine", async () => {
    const host = fakeHost();
    host.devices.set("bgr-vm1-root", "BANGER-vm1");
    host.devices.set("bgr-vm2-root", "LVM-not-ours");
    const disk = ops(host.runner);

    expect(await disk.removeSnapshot({ vmId: "vm1" })).toEqual({ existed: true });
    expect(host.calls).toEqual([
      ["dmsetup", "info", "-c", "--noheadings", "-o", "uuid", "bgr-vm1-root"],
      ["dmsetup", "remove", "bgr-vm1-root"],
    ]);
    expect(await disk.removeSnapshot({ vmId: "vm1" })).toEqual({ existed: false });

    host.calls.length = 0;
    const foreign = await caught(disk.removeSnapshot({ vmId: "vm2" }));
    expect(foreign).toBeInstanceOf(PermissionDeniedError);
    expect(foreign).toMatchObject({ reason: "NOT_BANGERS" });
    expect(host.calls.some((c) => c[1] === "remove")).toBe(false);
    expect([...host.devices]).toEqual([["bgr-vm2-root", "LVM-not-ours"]]);
    expect(await caught(disk.removeSnapshot({ vmId: "bad/id" }))).toMatchObject({ reason: "INVALID_VM_ID" });
  });

  it("lists only devices with banger's uuid prefix", async () => {
    const host = fakeHost();
    host.devices.set("bgr-vm1-root", "BANGER-vm1");
    host.devices.set("vg0-home", "LVM-abc");
    host.devices.set("plain", "");
    host.devices.set("odd", "BANGER-NOT_AN_ID");
    expect(await ops(host.runner).listSnapshots()).toEqual([
      { name: "bgr-vm1-root", uuid: "BANGER-vm1", vmId: "vm1", device: `${dev}/mapper/bgr-vm1-root` },
      { name: "odd", uuid: "BANGER-NOT_AN_ID", vmId: "", device: `${dev}/mapper/odd` },
    ]);
    expect(host.calls).toEqual([["dmsetup", "info", "-c", "--noheadings", "-o", "name,uuid", "--separator", ","]]);
  });

  it("without device-mapper: create fails as a precondition, remove and list find nothing, no command runs", async () => {
    const host = fakeHost();
    const disk = ops(host.runner, noDmDev);
    const error = await caught(disk.createSnapshot({ vmId: "vm1", originDevice: origin, cowDevice: cow }));
    expect(error).toBeInstanceOf(FailedPreconditionError);
    expect(error).toMatchObject({ reason: "DEVICE_MAPPER_ABSENT" });
    expect(await disk.removeSnapshot({ vmId: "vm1" })).toEqual({ existed: false });
    expect(await disk.listSnapshots()).toEqual([]);
    expect(host.calls).toEqual([]);
  });

  it("uses the VM's dm-snapshot as its root device when it is banger's", async () => {
    const host = fakeHost();
    const node = join(dev, "mapper", "bgr-vm1-root");
    await writeFile(node, "");
    try {
      host.devices.set("bgr-vm1-root", "BANGER-vm1");
      expect(await ops(host.runner).checkFilesystem({ vmId: "vm1" })).toEqual({
        exitCode: 0,
        outputTail: `${node}: clean`,
      });
      expect(host.calls.at(-1)).toEqual(["e2fsck", "-fy", node]);

      host.devices.set("bgr-vm1-root", "LVM-not-ours");
      host.calls.length = 0;
      expect(await caught(ops(host.runner).checkFilesystem({ vmId: "vm1" }))).toMatchObject({ reason: "NOT_BANGERS" });
      expect(host.calls.some((c) => c[0] === "e2fsck")).toBe(false);
    } finally {
      await rm(node);
    }
  });
});
