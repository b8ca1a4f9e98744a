import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BangerError } from "@banger/common";
import { EXT4_TOOLS, requireTools } from "@banger/common/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { workDiskFiles, type WorkDiskEntry } from "./guest-files.js";
import { createHostRunner, type Runner } from "@banger/common";
import { growWorkDisk, prepareWorkDisk, refreshWorkDisk } from "./work-disk.js";

const KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0000000000000000000000 banger@host";
const PATH = "/usr/sbin:/usr/bin:/sbin:/bin";
const MIB = 1024 * 1024;

let dir: string;
let home: string;
let scratch: string;
const savedTmp = process.env["TMPDIR"];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "banger-work-disk-"));
  home = join(dir, "home");
  mkdirSync(home);
  // debugfs's temp files go here, so a test can see that none is left behind.
  scratch = join(dir, "tmp");
  mkdirSync(scratch);
  process.env["TMPDIR"] = scratch;
});
afterEach(() => {
  if (savedTmp === undefined) delete process.env["TMPDIR"];
  else process.env["TMPDIR"] = savedTmp;
  rmSync(dir, { recursive: true, force: true });
});

function run(command: string, args: string[]): string {
  return execFileSync(command, args, {
    encoding: "utf8",
    env: { PATH, LC_ALL: "C" },
    stdio: ["ignore", "pipe", "pipe"],
  });
}
const debugfs = (disk: string, request: string) => run("debugfs", ["-R", request, disk]);

/** Mode (octal digits as debugfs prints them), uid, gid and type of a path on the disk. */
function inode(disk: string, path: string) {
  const out = debugfs(disk, `stat ${path}`);
  const head = /Type: (\S+)\s+Mode:\s+([0-7]+)/.exec(out);
  const owner = /User:\s+(-?\d+)\s+Group:\s+(-?\d+)/.exec(out);
  if (!head || !owner) return undefined;
  return { type: head[1], mode: head[2], uid: Number(owner[1]), gid: Number(owner[2]) };
}

function fsBytes(disk: string): number {
  const out = debugfs(disk, "stats");
  const blocks = Number(/Block count:\s+(\d+)/.exec(out)?.[1]);
  const size = Number(/Block size:\s+(\d+)/.exec(out)?.[1]);
  return blocks * size;
}

/** `e2fsck -fn` exit code: 0 means clean. */
function fsckClean(disk: string): number {
  return spawnSync("e2fsck", ["-fn", disk], { env: { PATH }, stdio: "ignore" }).status ?? -1;
}

/** A work seed as the image puller makes one: ext4 from a tree holding /.profile. */
function makeSeed(sizeMib = 16, extra: (tree: string) => void = () => {}): string {
  const tree = join(dir, "seed-tree");
  mkdirSync(tree);
  writeFileSync(join(tree, ".profile"), "export EDITOR=vi\n");
  extra(tree);
  const seed = join(dir, "seed.ext4");
  run("mkfs.ext4", ["-q", "-F", "-E", "root_owner=0:0", "-L", "seed", "-d", tree, seed, `${sizeMib}M`]);
  return seed;
}

async function failure(promise: Promise<unknown>): Promise<{ kind: string; reason: string; message: string }> {
  const error: unknown = await promise.then(
    () => new Error("expected a failure"),
    (e: unknown) => e,
  );
  if (!(error instanceof BangerError)) throw error;
  return { kind: error.kind, reason: error.reason, message: error.message };
}

const keyFiles = () => workDiskFiles({ publicKey: KEY, fileSync: [], home });

/** Work disks are ext4 files made and checked with e2fsprogs. */
const HAVE_E2FSPROGS = requireTools("work disks", EXT4_TOOLS).length === 0;

describe.skipIf(!HAVE_E2FSPROGS)("prepareWorkDisk", () => {
  it("copies the seed, grows it to the size asked and adds authorized_keys 0600 0:0 in /.ssh 0700", async () => {
    const seed = makeSeed(16);
    const target = join(dir, "work.ext4");
    await prepareWorkDisk({ target, seedPath: seed, sizeMib: 64, files: await keyFiles() });

    expect(statSync(target).size).toBe(64 * MIB);
    expect(statSync(target).mode & 0o777).toBe(0o600);
    expect(fsBytes(target)).toBe(64 * MIB);
    expect(debugfs(target, "cat /.profile")).toBe("export EDITOR=vi\n");
    expect(inode(target, "/.ssh")).toEqual({ type: "directory", mode: "0700", uid: 0, gid: 0 });
    expect(inode(target, "/.ssh/authorized_keys")).toEqual({ type: "regular", mode: "0600", uid: 0, gid: 0 });
    expect(debugfs(target, "cat /.ssh/authorized_keys")).toBe(`${KEY}\n`);
    expect(fsckClean(target)).toBe(0);
    expect(readdirSync(scratch)).toEqual([]);
    // The seed is untouched.
    expect(statSync(seed).size).toBe(16 * MIB);
  });

  it("makes an empty ext4 without a seed, root owned by 0:0 and labelled banger-work", async () => {
    const target = join(dir, "work.ext4");
    await prepareWorkDisk({ target, sizeMib: 32, files: await keyFiles() });

    expect(fsBytes(target)).toBe(32 * MIB);
    expect(run("dumpe2fs", ["-h", target])).toMatch(/^Filesystem volume name:\s+banger-work$/m);
    expect(inode(target, "/")).toMatchObject({ type: "directory", uid: 0, gid: 0 });
    expect(debugfs(target, "ls /")).toContain("lost+found");
    expect(inode(target, "/.ssh/authorized_keys")).toEqual({ type: "regular", mode: "0600", uid: 0, gid: 0 });
    expect(fsckClean(target)).toBe(0);
  });

  it("writes the gitconfig and file_sync files, making missing parents 0755 0:0", async () => {
    mkdirSync(join(home, ".config", "gh"), { recursive: true });
    writeFileSync(join(home, ".config", "gh", "hosts.yml"), "github.com:\n  oauth_token: t\n");
    const files = await workDiskFiles({
      publicKey: KEY,
      gitIdentity: { name: "Ada Lovelace", email: "ada@example.com" },
      fileSync: [
        { source: join(home, ".config", "gh", "hosts.yml"), target: "/root/.config/gh/hosts.yml", mode: 0o600 },
        { source: join(home, ".config", "gh", "hosts.yml"), target: "/root/-odd=name,1", mode: 0o640 },
      ],
      home,
    });
    const target = join(dir, "work.ext4");
    await prepareWorkDisk({ target, seedPath: makeSeed(), sizeMib: 32, files });

    expect(debugfs(target, "cat /.gitconfig")).toBe('[user]\n\tname = "Ada Lovelace"\n\temail = "ada@example.com"\n');
    expect(inode(target, "/.gitconfig")).toEqual({ type: "regular", mode: "0644", uid: 0, gid: 0 });
    expect(inode(target, "/.config")).toEqual({ type: "directory", mode: "0755", uid: 0, gid: 0 });
    expect(inode(target, "/.config/gh")).toEqual({ type: "directory", mode: "0755", uid: 0, gid: 0 });
    expect(inode(target, "/.config/gh/hosts.yml")).toEqual({ type: "regular", mode: "0600", uid: 0, gid: 0 });
    expect(debugfs(target, "cat /.config/gh/hosts.yml")).toBe("github.com:\n  oauth_token: t\n");
    expect(inode(target, "/-odd=name,1")).toEqual({ type: "regular", mode: "0640", uid: 0, gid: 0 });
    expect(fsckClean(target)).toBe(0);
  });

  it("replaces what the seed had at those paths and sets the listed owners and modes", async () => {
    const seed = makeSeed(16, (tree) => {
      mkdirSync(join(tree, ".ssh"), { mode: 0o755 });
      writeFileSync(join(tree, ".ssh", "authorized_keys"), "ssh-ed25519 AAAAold old@key\n");
      writeFileSync(join(tree, ".ssh", "known_hosts"), "kept\n");
      // A file right under the disk's root, as a promoted VM's work disk has (debugfs `rm /x` trap).
      writeFileSync(join(tree, ".gitconfig"), "[user]\n\tname = Old\n");
    });
    const files: WorkDiskEntry[] = [
      ...(await keyFiles()),
      // Right after the key: debugfs's current directory is then /.ssh.
      {
        kind: "file",
        path: "/.gitconfig",
        content: Buffer.from("[user]\n\tname = New\n"),
        mode: 0o644,
        uid: 0,
        gid: 0,
      },
      { kind: "file", path: "/owned", content: Buffer.from(""), mode: 0o4750, uid: 1000, gid: 4294967294 },
    ];
    const target = join(dir, "work.ext4");
    await prepareWorkDisk({ target, seedPath: seed, sizeMib: 16, files });

    expect(inode(target, "/.ssh")).toEqual({ type: "directory", mode: "0700", uid: 0, gid: 0 });
    expect(debugfs(target, "cat /.ssh/authorized_keys")).toBe(`${KEY}\n`);
    expect(debugfs(target, "cat /.ssh/known_hosts")).toBe("kept\n");
    expect(inode(target, "/owned")).toEqual({ type: "regular", mode: "04750", uid: 1000, gid: -2 });
    expect(debugfs(target, "cat /.gitconfig")).toBe("[user]\n\tname = New\n");
    expect(fsckClean(target)).toBe(0);
  });

  it("refuses a size below the seed's file system and leaves no target file", async () => {
    const target = join(dir, "work.ext4");
    const error = await failure(
      prepareWorkDisk({ target, seedPath: makeSeed(32), sizeMib: 16, files: await keyFiles() }),
    );
    expect(error).toMatchObject({ kind: "failed-precondition", reason: "WORK_DISK_TOO_SMALL" });
    expect(existsSync(target)).toBe(false);
  });

  it("refuses a seed holding a file where /.ssh must be a directory, and cleans up", async () => {
    const seed = makeSeed(16, (tree) => writeFileSync(join(tree, ".ssh"), "not a dir"));
    const target = join(dir, "work.ext4");
    const error = await failure(prepareWorkDisk({ target, seedPath: seed, sizeMib: 16, files: await keyFiles() }));
    expect(error).toMatchObject({ kind: "failed-precondition", reason: "WORK_DISK_PATH_CONFLICT" });
    expect(error.message).toContain("/.ssh");
    expect(existsSync(target)).toBe(false);
    expect(readdirSync(scratch)).toEqual([]);
  });

  it("removes the target and its temp files when a step fails midway (debugfs here)", async () => {
    const real = createHostRunner();
    const runner: Runner = {
      run: (argv, options) =>
        argv[0] === "debugfs" && argv[1] === "-w"
          ? real.run(["sh", "-c", "echo 'debugfs: disk on fire' >&2; exit 3"], options)
          : real.run(argv, options),
    };
    const target = join(dir, "work.ext4");
    const error = await failure(
      prepareWorkDisk({ target, seedPath: makeSeed(), sizeMib: 32, files: await keyFiles(), runner }),
    );
    expect(error).toMatchObject({ kind: "internal", reason: "HOST_COMMAND_FAILED" });
    expect(error.message).toContain("exited 3: debugfs: disk on fire");
    expect(existsSync(target)).toBe(false);
    expect(readdirSync(scratch)).toEqual([]);
  });

  it("fails WORK_DISK_WRITE_FAILED when the write session wrote nothing or could not close, though it exited 0", async () => {
    const real = createHostRunner();
    const writeSession = (
      fake: (argv: readonly string[], options: Parameters<Runner["run"]>[1]) => ReturnType<Runner["run"]>,
    ): Runner => ({
      run: (argv, options) =>
        argv[0] === "debugfs" && argv[1] === "-w" ? fake(argv, options) : real.run(argv, options),
    });
    // A session that does nothing at all: its read-back shows nothing either.
    const idle = writeSession((_argv, options) => real.run(["true"], options));
    // A session that wrote everything, then failed to flush it when it closed.
    const unflushed = writeSession(async (argv, options) => {
      const result = await real.run(argv, options);
      return { ...result, stderr: `${result.stderr}ext2fs_close: Short write trying to write a block\n` };
    });
    for (const [runner, message] of [
      [idle, "/.ssh/authorized_keys: missing"],
      [unflushed, "closing the file system: ext2fs_close: Short write"],
    ] as const) {
      const target = join(dir, "work.ext4");
      const error = await failure(prepareWorkDisk({ target, sizeMib: 32, files: await keyFiles(), runner }));
      expect(error).toMatchObject({ kind: "failed-precondition", reason: "WORK_DISK_WRITE_FAILED" });
      expect(error.message).toContain(message);
      expect(existsSync(target)).toBe(false);
      expect(readdirSync(scratch)).toEqual([]);
    }
  });

  it("reports e2fsck's stderr when the copied seed is beyond repair", async () => {
    const seed = join(dir, "garbage.ext4");
    writeFileSync(seed, Buffer.alloc(2 * MIB, 7));
    const target = join(dir, "work.ext4");
    const error = await failure(prepareWorkDisk({ target, seedPath: seed, sizeMib: 16, files: await keyFiles() }));
    expect(error).toMatchObject({ reason: "HOST_COMMAND_FAILED" });
    expect(error.message).toMatch(/^e2fsck -fy \S+ exited (8|12)/);
    expect(existsSync(target)).toBe(false);
  });

  it("refuses a missing seed and an existing target without touching either", async () => {
    const target = join(dir, "work.ext4");
    expect(
      await failure(prepareWorkDisk({ target, seedPath: join(dir, "nope"), sizeMib: 16, files: [] })),
    ).toMatchObject({ reason: "WORK_SEED_MISSING" });
    expect(existsSync(target)).toBe(false);
    writeFileSync(target, "precious");
    expect(await failure(prepareWorkDisk({ target, sizeMib: 16, files: [] }))).toMatchObject({
      reason: "WORK_DISK_EXISTS",
    });
    expect(statSync(target).size).toBe(8);
  });

  it("stops when aborted and leaves no target file", async () => {
    const controller = new AbortController();
    const real = createHostRunner();
    const runner: Runner = {
      run: (argv, options) => {
        if (argv[0] === "resize2fs") controller.abort();
        return real.run(argv, options);
      },
    };
    const target = join(dir, "work.ext4");
    const error = await failure(
      prepareWorkDisk({ target, seedPath: makeSeed(), sizeMib: 32, files: [], signal: controller.signal, runner }),
    );
    expect(error).toMatchObject({ kind: "cancelled" });
    expect(existsSync(target)).toBe(false);
  });

  it("refuses entries it cannot write safely before creating anything", async () => {
    const target = join(dir, "work.ext4");
    for (const [files, reason] of [
      [[{ kind: "file", path: "/a b", content: Buffer.from(""), mode: 0o600, uid: 0, gid: 0 }], "INVALID_DISK_PATH"],
      [[{ kind: "directory", path: "/x", mode: 0o10000, uid: 0, gid: 0 }], "INVALID_MODE"],
      [[{ kind: "directory", path: "/x", mode: 0o755, uid: -1, gid: 0 }], "INVALID_OWNER"],
    ] as const) {
      expect(await failure(prepareWorkDisk({ target, sizeMib: 16, files }))).toMatchObject({ reason });
    }
    expect(await failure(prepareWorkDisk({ target, sizeMib: 4, files: [] }))).toMatchObject({
      reason: "INVALID_DISK_SIZE",
    });
    expect(existsSync(target)).toBe(false);
  });
});

describe.skipIf(!HAVE_E2FSPROGS)("growWorkDisk", () => {
  it("grows the file system, keeps its files, and refuses to shrink", async () => {
    const target = join(dir, "work.ext4");
    await prepareWorkDisk({ target, seedPath: makeSeed(), sizeMib: 32, files: await keyFiles() });

    await growWorkDisk(target, 96);
    expect(fsBytes(target)).toBe(96 * MIB);
    expect(statSync(target).size).toBe(96 * MIB);
    expect(debugfs(target, "cat /.ssh/authorized_keys")).toBe(`${KEY}\n`);
    expect(fsckClean(target)).toBe(0);

    await growWorkDisk(target, 96); // same size: nothing to do
    const error = await failure(growWorkDisk(target, 64));
    expect(error).toMatchObject({ kind: "failed-precondition", reason: "WORK_DISK_SHRINK_REFUSED" });
    expect(error.message).toContain("96 MiB");
    expect(fsBytes(target)).toBe(96 * MIB);
    expect(fsckClean(target)).toBe(0);
  });

  it("truncates the file back when resize2fs fails before changing the file system", async () => {
    const target = join(dir, "work.ext4");
    await prepareWorkDisk({ target, sizeMib: 32, files: [] });
    const real = createHostRunner();
    const runner: Runner = {
      run: (argv, options) => (argv[0] === "resize2fs" ? real.run(["false"], options) : real.run(argv, options)),
    };
    expect(await failure(growWorkDisk(target, 64, undefined, runner))).toMatchObject({ reason: "HOST_COMMAND_FAILED" });
    expect(statSync(target).size).toBe(32 * MIB);
    expect(fsckClean(target)).toBe(0);
  });

  it("says so when the disk does not exist", async () => {
    expect(await failure(growWorkDisk(join(dir, "nope.ext4"), 64))).toMatchObject({ reason: "WORK_DISK_MISSING" });
  });
});

describe.skipIf(!HAVE_E2FSPROGS)("refreshWorkDisk", () => {
  const OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyForTestsOnly000000000000000000000 banger@host";
  /** Changes the disk as a guest might, with a debugfs -w script. */
  const asGuest = (disk: string, lines: readonly string[]) =>
    execFileSync("debugfs", ["-w", "-f", "-", disk], { input: `${lines.join("\n")}\n`, env: { PATH }, stdio: "pipe" });

  it("writes banger's files again over what the guest changed, and leaves the guest's own files alone", async () => {
    const target = join(dir, "work.ext4");
    await prepareWorkDisk({ target, seedPath: makeSeed(), sizeMib: 32, files: await keyFiles() });
    const mine = join(dir, "mine");
    writeFileSync(mine, "the guest's\n");
    asGuest(target, ["cd /", `write ${mine} mine`, "cd /.ssh", "rm authorized_keys", `write ${mine} authorized_keys`]);

    await refreshWorkDisk({ path: target, files: await workDiskFiles({ publicKey: OTHER_KEY, fileSync: [], home }) });
    expect(debugfs(target, "cat /.ssh/authorized_keys")).toBe(`${OTHER_KEY}\n`);
    expect(inode(target, "/.ssh/authorized_keys")).toEqual({ type: "regular", mode: "0600", uid: 0, gid: 0 });
    expect(debugfs(target, "cat /mine")).toBe("the guest's\n");
    expect(debugfs(target, "cat /.profile")).toBe("export EDITOR=vi\n");
    expect(fsckClean(target)).toBe(0);
    expect(readdirSync(scratch)).toEqual([]);
  });

  it("refuses, writing nothing, when the guest turned a directory of banger's into a symlink", async () => {
    const target = join(dir, "work.ext4");
    await prepareWorkDisk({ target, sizeMib: 32, files: await keyFiles() });
    asGuest(target, ["cd /.ssh", "rm authorized_keys", "cd /", "rmdir .ssh", "symlink .ssh /etc"]);

    const error = await failure(
      refreshWorkDisk({ path: target, files: await workDiskFiles({ publicKey: OTHER_KEY, fileSync: [], home }) }),
    );
    expect(error).toMatchObject({ kind: "failed-precondition", reason: "WORK_DISK_PATH_CONFLICT" });
    expect(inode(target, "/.ssh")).toMatchObject({ type: "symlink" });
    expect(fsckClean(target)).toBe(0);
  });

  it("says so when the disk does not exist", async () => {
    expect(await failure(refreshWorkDisk({ path: join(dir, "nope.ext4"), files: [] }))).toMatchObject({
      reason: "WORK_DISK_MISSING",
    });
  });
});
