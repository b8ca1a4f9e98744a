/**
 * The helper's disk operations through its socket, for real: loop devices on
 * real files, e2fsck and guest-file writes on a real ext4 image, verified
 * with debugfs; hostile paths and files that are not the owner's refused with
 * the inventory unchanged; e2fsprogs run as the owner. Needs root.
 * (device-mapper is absent here; its path is tested in ops/disk.test.ts with a
 * scripted runner.)
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  chownSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ErrorInfoSchema } from "@banger/gen/google/rpc/error_details_pb.js";
import { DiskService, type GuestDisk } from "@banger/gen/banger/privileged/v1/disk_pb.js";
import { HostService } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import fc from "fast-check";
import { EXT4_TOOLS, requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { failure } from "./harness.js";
import { IS_ROOT, NETNS_TOOLS, createNetNs, startHelperInNs, type HelperInNs, type NetNs } from "./netns.js";

const OWNER = 1000;
let ns: NetNs;
let dir: string;
let state: string;
let helper: HelperInNs;
let disk: Client<typeof DiskService>;
let host: Client<typeof HostService>;

/** An ext4 image, the owner's unless `owner` says otherwise. */
function mkfs(path: string, mib = 8, owner = OWNER): void {
  writeFileSync(path, Buffer.alloc(0));
  execFileSync("truncate", ["-s", `${mib}M`, path]);
  execFileSync("mkfs.ext4", ["-q", "-F", path]);
  chownSync(path, owner, owner);
}

/** `losetup -l` (the kernel's list, independent of the helper): the devices on files under this test's dir. */
const losetupList = () =>
  execFileSync("losetup", ["-l", "--noheadings", "-O", "NAME,BACK-FILE"], { encoding: "utf8" })
    .split("\n")
    .filter((line) => line.includes(` ${dir}/`))
    .join("\n");

const sha = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");

const RUNS =
  IS_ROOT && requireTools("privileged disk operations", [...NETNS_TOOLS, ...EXT4_TOOLS, "losetup"]).length === 0;

beforeAll(async () => {
  if (!RUNS) return;
  ns = createNetNs();
  dir = mkdtempSync(join(tmpdir(), "banger-disk-"));
  chmodSync(dir, 0o755);
  state = join(dir, "state");
  mkdirSync(join(dir, "run"));
  mkdirSync(join(state, "images"), { recursive: true });
  mkdirSync(join(state, "vms", "box"), { recursive: true });
  helper = await startHelperInNs(ns, join(dir, "run"), state, OWNER);
  disk = createClient(DiskService, helper.transport.transport);
  host = createClient(HostService, helper.transport.transport);
});

afterAll(async () => {
  if (!RUNS) return;
  await helper.stop();
  ns.remove();
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!RUNS)("privileged disk operations", () => {
  it("attaches a VM's root image, checks it, writes and removes guest files, and detaches", async () => {
    const root = join(state, "vms", "box", "root.ext4");
    mkfs(root);
    const { device } = await disk.attachLoop({ path: root });
    expect(device).toMatch(/^\/dev\/loop\d+$/);
    try {
      expect((await host.getInventory({})).loopDevices).toEqual([
        expect.objectContaining({ device, backingFile: root, readOnly: false }),
      ]);
      await disk.detachLoop({ device, path: root });
      // A clone root disk is a file: the helper checks and writes it without a loop device.
      expect((await disk.checkFilesystem({ vmId: "box" })).exitCode).toBe(0);
      const written = await disk.writeGuestFiles({
        vmId: "box",
        files: [
          { path: "/etc/hostname", content: Buffer.from("box\n"), mode: 0o644, uid: 0, gid: 0 },
          {
            path: "/root/.ssh/authorized_keys",
            content: Buffer.from("ssh-ed25519 AAAA test\n"),
            mode: 0o600,
            uid: 1000,
            gid: 1000,
          },
        ],
      });
      expect(written.written).toBe(2);
      const stat = execFileSync("debugfs", ["-R", "stat /root/.ssh/authorized_keys", root], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"],
      });
      expect(stat).toMatch(/Mode:\s+0600/);
      expect(stat).toMatch(/User:\s+1000\s+Group:\s+1000/);
      expect(
        execFileSync("debugfs", ["-R", "cat /etc/hostname", root], {
          encoding: "utf8",
          stdio: ["ignore", "pipe", "ignore"],
        }),
      ).toBe("box\n");
      expect((await disk.removeGuestFiles({ vmId: "box", paths: ["/etc/hostname", "/nope"] })).removed).toBe(1);
      expect((await disk.checkFilesystem({ vmId: "box" })).exitCode).toBe(0);
    } finally {
      await disk.detachLoop({ device, path: root });
    }
    expect(await disk.detachLoop({ device, path: root })).toMatchObject({ existed: false });
    expect((await host.getInventory({})).loopDevices).toEqual([]);
  });

  it("refuses to attach a root-owned file in the state directory (the dev-mode log), attaching nothing", async () => {
    mkdirSync(join(state, "logs"), { recursive: true });
    const log = join(state, "logs", "privileged.jsonl");
    writeFileSync(log, '{"msg":"root\'s log"}\n', { mode: 0o600 });
    const image = join(state, "images", "root-owned.ext4");
    mkfs(image, 4, 0);
    const before = losetupList();
    for (const path of [log, image]) {
      for (const readOnly of [true, false]) {
        const error = await failure(() => disk.attachLoop({ path, readOnly }));
        expect(error.code, `${path}: ${error.rawMessage}`).toBe(Code.PermissionDenied);
        expect(error.rawMessage).toMatch(/not to banger's owner/);
        expect(error.findDetails(ErrorInfoSchema)[0]?.reason).toBe("NOT_OWNERS_FILE");
      }
    }
    expect(losetupList()).toBe(before);
    expect((await host.getInventory({})).loopDevices).toEqual([]);
  });

  it("runs e2fsck and debugfs as the owner: a root disk the owner may only read is left unchanged", async () => {
    mkdirSync(join(state, "vms", "ro"), { recursive: true });
    const root = join(state, "vms", "ro", "root.ext4");
    mkfs(root);
    // Root's read-write loop device over it, as root-run tools used (they would succeed through it).
    const { device } = await disk.attachLoop({ path: root });
    const hostname = { path: "/etc/hostname", content: Buffer.from("ro\n"), mode: 0o644 };
    expect((await disk.writeGuestFiles({ vmId: "ro", files: [hostname] })).written).toBe(1);
    chmodSync(root, 0o400); // root could write it; the owner cannot
    const hash = sha(root);
    const calls: [string, () => Promise<unknown>][] = [
      ["CheckFilesystem", () => disk.checkFilesystem({ vmId: "ro" })],
      [
        "WriteGuestFiles",
        () =>
          disk.writeGuestFiles({
            vmId: "ro",
            files: [{ ...hostname, content: Buffer.from("x\n") }],
          }),
      ],
      ["RemoveGuestFiles", () => disk.removeGuestFiles({ vmId: "ro", paths: ["/etc/hostname"] })],
    ];
    try {
      for (const [rpc, call] of calls) {
        const error = await failure(call);
        expect(error.code, `${rpc}: ${error.rawMessage}`).toBe(Code.PermissionDenied);
        expect(error.findDetails(ErrorInfoSchema)[0]?.reason, rpc).toBe("OWNER_CANNOT_OPEN_DISK");
      }
    } finally {
      await disk.detachLoop({ device, path: root });
    }
    expect(sha(root)).toBe(hash);
    expect(
      execFileSync("debugfs", ["-R", "cat /etc/hostname", root], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"],
      }),
    ).toBe("ro\n");
  });

  it("refuses hostile paths and devices with INVALID_ARGUMENT or PERMISSION_DENIED, changing nothing", async () => {
    const images = join(state, "images");
    const good = join(images, "good.ext4");
    mkfs(good, 4);
    const outside = join(dir, "outside.ext4");
    mkfs(outside, 4);
    symlinkSync(outside, join(images, "link.ext4"));
    mkdirSync(join(dir, "elsewhere"));
    mkfs(join(dir, "elsewhere", "x.ext4"), 4);
    symlinkSync(join(dir, "elsewhere"), join(images, "linked-dir"));
    mkfs(join(images, "hard.ext4"), 4);
    linkSync(join(images, "hard.ext4"), join(dir, "second-name.ext4"));
    execFileSync("mkfifo", [join(images, "fifo")]);
    execFileSync("mknod", [join(images, "null"), "c", "1", "3"]);
    const before = JSON.stringify(await host.getInventory({}));
    const hashes = [good, outside].map(sha);

    const paths: [string, string][] = [
      ["outside the state dir", outside],
      ["relative", "images/good.ext4"],
      ["with ..", `${images}/../images/good.ext4`],
      ["a symlinked component", join(images, "linked-dir", "x.ext4")],
      ["a symlink file", join(images, "link.ext4")],
      ["a hard-linked file", join(images, "hard.ext4")],
      ["a FIFO", join(images, "fifo")],
      ["a device node", join(images, "null")],
      ["/proc/self/fd/0", "/proc/self/fd/0"],
      ["the state dir itself", state],
      ["a directory", images],
      ["empty", ""],
      ["NUL inside", `${good}\0x`],
    ];
    for (const [what, path] of paths) {
      const error = await failure(() => disk.attachLoop({ path }));
      expect([Code.InvalidArgument, Code.PermissionDenied], `${what}: ${error.code} ${error.rawMessage}`).toContain(
        error.code,
      );
    }
    const devices: [string, () => Promise<unknown>][] = [
      ["a device that is not a loop", () => disk.detachLoop({ device: "/dev/sda", path: good })],
      ["a loop path with ..", () => disk.detachLoop({ device: "/dev/loop0/../sda", path: good })],
      ["a loop that is not banger's", () => disk.detachLoop({ device: "/dev/loop0", path: outside })],
      [
        "snapshot origin not a loop",
        () => disk.createSnapshot({ vmId: "box", originDevice: "/dev/sda", cowDevice: "/dev/loop1" }),
      ],
      ["snapshot of a bad vm id", () => disk.removeSnapshot({ vmId: "../x" })],
      ["fsck of a bad vm id", () => disk.checkFilesystem({ vmId: "a/b" })],
      [
        "guest file with ..",
        () =>
          disk.writeGuestFiles({ vmId: "box", files: [{ path: "/etc/../x", content: Buffer.from("x"), mode: 0o644 }] }),
      ],
      [
        "guest file relative",
        () => disk.writeGuestFiles({ vmId: "box", files: [{ path: "etc/x", content: Buffer.from("x"), mode: 0o644 }] }),
      ],
      [
        "guest file mode too big",
        () => disk.writeGuestFiles({ vmId: "box", files: [{ path: "/x", content: Buffer.from("x"), mode: 0o17777 }] }),
      ],
      ["unknown guest disk", () => disk.checkFilesystem({ vmId: "box", disk: 7 as GuestDisk })],
    ];
    for (const [what, call] of devices) {
      const error = await failure(call);
      expect([Code.InvalidArgument, Code.PermissionDenied], `${what}: ${error.code} ${error.rawMessage}`).toContain(
        error.code,
      );
    }
    expect(JSON.stringify(await host.getInventory({}))).toBe(before);
    expect([good, outside].map(sha)).toEqual(hashes);
  });

  it("works as the installed unit runs it (no CAP_DAC_OVERRIDE): files through the group, e2fsprogs as the owner", async () => {
    const unitDir = mkdtempSync(join(tmpdir(), "banger-disk-unit-"));
    chmodSync(unitDir, 0o755);
    const unitNs = createNetNs();
    const unitState = join(unitDir, "state");
    mkdirSync(join(unitDir, "run"));
    mkdirSync(join(unitState, "vms", "u"), { recursive: true });
    const unitHelper = await startHelperInNs(unitNs, join(unitDir, "run"), unitState, OWNER, [], true);
    try {
      const unitDisk = createClient(DiskService, unitHelper.transport.transport);
      const root = join(unitState, "vms", "u", "root.ext4");
      mkfs(root);
      chmodSync(root, 0o660); // as bangerd makes a clone: the owner's, read-write for the group
      expect((await unitDisk.checkFilesystem({ vmId: "u" })).exitCode).toBe(0);
      const files = [{ path: "/etc/hostname", content: Buffer.from("unit\n"), mode: 0o644 }];
      expect((await unitDisk.writeGuestFiles({ vmId: "u", files })).written).toBe(1);
      expect(
        execFileSync("debugfs", ["-R", "cat /etc/hostname", root], {
          encoding: "utf8",
          stdio: ["ignore", "pipe", "ignore"],
        }),
      ).toBe("unit\n");
      expect((await unitDisk.removeGuestFiles({ vmId: "u", paths: ["/etc/hostname"] })).removed).toBe(1);
      const { device } = await unitDisk.attachLoop({ path: root, readOnly: true });
      await unitDisk.detachLoop({ device, path: root });
    } finally {
      await unitHelper.stop();
      unitNs.remove();
      rmSync(unitDir, { recursive: true, force: true });
    }
  });

  it("survives 1,000 random hostile requests per disk RPC with the inventory unchanged", async () => {
    const before = JSON.stringify(await host.getInventory({}));
    const pid = helper.child.pid;
    const text = fc.oneof(
      fc.string({ maxLength: 60 }),
      fc.constantFrom(
        "/etc/shadow",
        "/dev/sda",
        "/proc/self/fd/3",
        `${state}/../x`,
        `${state}/images/fifo`,
        "/dev/loop0",
      ),
      fc.string({ maxLength: 20 }).map((s) => `${state}/${s}`),
    );
    const badId = fc.string({ maxLength: 40 }).filter((v) => !/^[a-z0-9][a-z0-9-]{0,31}$/.test(v));
    const refused = [Code.InvalidArgument, Code.PermissionDenied, Code.FailedPrecondition, Code.NotFound];
    const calls: [string, fc.Arbitrary<() => Promise<unknown>>][] = [
      ["AttachLoop", fc.record({ path: text, readOnly: fc.boolean() }).map((r) => () => disk.attachLoop(r))],
      ["DetachLoop", fc.record({ device: text, path: text }).map((r) => () => disk.detachLoop(r))],
      [
        "CreateSnapshot",
        fc.record({ vmId: badId, originDevice: text, cowDevice: text }).map((r) => () => disk.createSnapshot(r)),
      ],
      ["RemoveSnapshot", badId.map((vmId) => () => disk.removeSnapshot({ vmId }))],
      ["CheckFilesystem", badId.map((vmId) => () => disk.checkFilesystem({ vmId }))],
      [
        "WriteGuestFiles",
        fc.record({ vmId: badId, path: text, mode: fc.nat() }).map(
          (r) => () =>
            disk.writeGuestFiles({
              vmId: r.vmId,
              files: [{ path: r.path, content: Buffer.from("x"), mode: r.mode }],
            }),
        ),
      ],
      [
        "RemoveGuestFiles",
        fc.record({ vmId: badId, paths: fc.array(text, { maxLength: 3 }) }).map((r) => () => disk.removeGuestFiles(r)),
      ],
    ];
    // Deletes are idempotent: "nothing there" is a success that changes nothing.
    const mayAnswerNothingToDo = new Set(["DetachLoop", "RemoveSnapshot"]);
    for (const [rpc, arbitrary] of calls) {
      await fc.assert(
        fc.asyncProperty(arbitrary, async (call) => {
          const outcome = await call().then(
            (response) => response,
            (error: unknown) => error,
          );
          if (outcome instanceof ConnectError) {
            expect(refused, `${rpc}: ${outcome.code} ${outcome.rawMessage}`).toContain(outcome.code);
          } else {
            expect(mayAnswerNothingToDo.has(rpc), `${rpc} succeeded: ${JSON.stringify(outcome)}`).toBe(true);
            expect(outcome).toMatchObject({ existed: false });
          }
        }),
        { numRuns: 1000 },
      );
    }
    expect(helper.child.pid).toBe(pid);
    expect(helper.child.exitCode).toBeNull();
    expect(JSON.stringify(await host.getInventory({}))).toBe(before);
  }, 180_000); // thousands of calls: a correctness test, given room on a loaded machine
});
