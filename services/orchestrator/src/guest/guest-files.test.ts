import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BangerError } from "@banger/common";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  FILE_SYNC_MAX_DEPTH,
  FILE_SYNC_MAX_ENTRIES,
  FILE_SYNC_MAX_FILE_BYTES,
  bootArgsIp,
  rootDiskFiles,
  toWorkDiskPath,
  workDiskFiles,
  type WorkDiskEntry,
} from "./guest-files.js";

const KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0000000000000000000000 banger@host";
const network = {
  hostname: "dev-1",
  guestIp: "172.30.0.5",
  prefixLength: 24,
  gateway: "172.30.0.1",
  nameserver: "172.30.0.1",
};

const text = (files: readonly { path: string; content: Uint8Array }[], path: string) =>
  Buffer.from(files.find((f) => f.path === path)?.content ?? new Uint8Array()).toString();

/** Resolves with the error's kind and reason, or fails the test if the promise resolved. */
async function failure(promise: Promise<unknown>): Promise<{ kind: string; reason: string; message: string }> {
  const error: unknown = await promise.then(
    () => new Error("expected a failure"),
    (e: unknown) => e,
  );
  if (!(error instanceof BangerError)) throw error;
  return { kind: error.kind, reason: error.reason, message: error.message };
}

/** A sparse file of `size` bytes. */
function sparse(path: string, size: number) {
  writeFileSync(path, "");
  truncateSync(path, size);
}

function thrown(fn: () => unknown) {
  return failure(Promise.resolve().then(fn));
}

describe("rootDiskFiles", () => {
  it("names the VM and configures its static address for networkd, ifupdown and resolv.conf", () => {
    const files = rootDiskFiles({ ...network, domain: "vm" });
    expect(files.map((f) => f.path)).toEqual([
      "/etc/hostname",
      "/etc/hosts",
      "/etc/resolv.conf",
      "/etc/systemd/network/10-banger.network",
      "/etc/network/interfaces.d/banger",
    ]);
    for (const file of files)
      expect({ mode: file.mode, uid: file.uid, gid: file.gid }).toEqual({ mode: 0o644, uid: 0, gid: 0 });
    expect(text(files, "/etc/hostname")).toBe("dev-1\n");
    expect(text(files, "/etc/hosts")).toContain("127.0.1.1\tdev-1.vm dev-1\n");
    expect(text(files, "/etc/hosts")).toContain("172.30.0.5\tdev-1.vm dev-1\n");
    expect(text(files, "/etc/hosts")).toContain("127.0.0.1\tlocalhost\n");
    expect(text(files, "/etc/resolv.conf")).toMatch(/^nameserver 172\.30\.0\.1\nsearch vm\n$/m);
    const networkd = text(files, "/etc/systemd/network/10-banger.network");
    expect(networkd).toContain("[Match]\nType=ether\nName=eth0\n");
    expect(networkd).toContain("Address=172.30.0.5/24\nGateway=172.30.0.1\nDNS=172.30.0.1\nDomains=vm\n");
    const ifupdown = text(files, "/etc/network/interfaces.d/banger");
    expect(ifupdown).toContain("auto eth0\niface eth0 inet static\n");
    expect(ifupdown).toContain("    address 172.30.0.5\n    netmask 255.255.255.0\n    gateway 172.30.0.1\n");
  });

  it("builds the kernel's ip= boot argument", () => {
    expect(bootArgsIp(network)).toBe("ip=172.30.0.5::172.30.0.1:255.255.255.0:dev-1:eth0:off");
    expect(bootArgsIp({ ...network, guestIp: "10.9.200.7", gateway: "10.9.0.1", prefixLength: 16 })).toBe(
      "ip=10.9.200.7::10.9.0.1:255.255.0.0:dev-1:eth0:off",
    );
  });

  it.each([
    [{ hostname: "Dev" }, "INVALID_HOSTNAME"],
    [{ hostname: "-dev" }, "INVALID_HOSTNAME"],
    [{ hostname: "a".repeat(64) }, "INVALID_HOSTNAME"],
    [{ hostname: "dev.vm" }, "INVALID_HOSTNAME"],
    [{ guestIp: "172.30.0.256" }, "INVALID_GUEST_NETWORK"],
    [{ guestIp: "172.30.00.5" }, "INVALID_GUEST_NETWORK"],
    [{ nameserver: "dns.example" }, "INVALID_GUEST_NETWORK"],
    [{ prefixLength: 15 }, "INVALID_GUEST_NETWORK"],
    [{ prefixLength: 31 }, "INVALID_GUEST_NETWORK"],
    [{ prefixLength: 24.5 }, "INVALID_GUEST_NETWORK"],
    [{ guestIp: "172.30.0.0" }, "INVALID_GUEST_NETWORK"],
    [{ guestIp: "172.30.0.255" }, "INVALID_GUEST_NETWORK"],
    [{ guestIp: "172.30.0.1" }, "INVALID_GUEST_NETWORK"],
    [{ gateway: "172.30.1.1" }, "INVALID_GUEST_NETWORK"],
    [{ domain: "v m" }, "INVALID_DOMAIN"],
  ])("refuses %j (%s)", async (change, reason) => {
    expect(await thrown(() => rootDiskFiles({ ...network, ...change }))).toMatchObject({
      kind: "invalid-argument",
      reason,
    });
  });
});

describe("toWorkDiskPath", () => {
  it("maps guest paths below /root onto the disk's root", () => {
    expect(toWorkDiskPath("/root/.ssh/authorized_keys")).toBe("/.ssh/authorized_keys");
    expect(toWorkDiskPath("/root/x")).toBe("/x");
  });

  it.each([
    "/root",
    "/root/",
    "/etc/passwd",
    "/rootx/a",
    "/root/a/../b",
    "/root//a",
    "/root/a b",
    "/root/<12>",
    "root/a",
  ])("refuses %j", async (path) => {
    expect(await thrown(() => toWorkDiskPath(path))).toMatchObject({ reason: "FILE_SYNC_INVALID_TARGET" });
  });
});

describe("workDiskFiles", () => {
  let dir: string;
  let home: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), "banger-guest-files-"));
    home = join(dir, "home");
    mkdirSync(join(home, ".config"), { recursive: true });
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const byPath = (entries: readonly WorkDiskEntry[]) => new Map(entries.map((e) => [e.path, e]));

  it("writes the banger key into /.ssh (0700) as authorized_keys (0600), all 0:0", async () => {
    const entries = await workDiskFiles({ publicKey: `${KEY}\n`, fileSync: [], home });
    expect(entries).toEqual([
      { kind: "directory", path: "/.ssh", mode: 0o700, uid: 0, gid: 0 },
      {
        kind: "file",
        path: "/.ssh/authorized_keys",
        content: Buffer.from(`${KEY}\n`),
        mode: 0o600,
        uid: 0,
        gid: 0,
      },
    ]);
  });

  it("writes /.gitconfig for a git identity, quoting what git needs quoted", async () => {
    const entries = byPath(
      await workDiskFiles({
        publicKey: KEY,
        gitIdentity: { name: 'Ada "A" L\\x', email: "ada@example.com" },
        fileSync: [],
        home,
      }),
    );
    const git = entries.get("/.gitconfig");
    expect(git).toMatchObject({ kind: "file", mode: 0o644, uid: 0, gid: 0 });
    expect(text([git as { path: string; content: Uint8Array }], "/.gitconfig")).toBe(
      '[user]\n\tname = "Ada \\"A\\" L\\\\x"\n\temail = "ada@example.com"\n',
    );
    expect(
      await failure(workDiskFiles({ publicKey: KEY, gitIdentity: { name: "a\nb", email: "x@y" }, fileSync: [], home })),
    ).toMatchObject({ reason: "INVALID_GIT_IDENTITY" });
  });

  it.each(["", "ssh-ed25519", "ssh-ed25519 AAAA\nssh-rsa AAAA", 'from="x" ssh-ed25519 AAAA', "ssh-dss AAAA"])(
    "refuses the public key %j",
    async (publicKey) => {
      expect(await failure(workDiskFiles({ publicKey, fileSync: [], home }))).toMatchObject({
        kind: "invalid-argument",
        reason: "INVALID_PUBLIC_KEY",
      });
    },
  );

  it("copies file_sync sources from the home, through symlinks that stay inside it", async () => {
    writeFileSync(join(home, ".config", "hosts.yml"), "token: x\n");
    symlinkSync(join(home, ".config", "hosts.yml"), join(home, "link.yml"));
    const entries = byPath(
      await workDiskFiles({
        publicKey: KEY,
        fileSync: [
          { source: join(home, ".config", "hosts.yml"), target: "/root/.config/gh/hosts.yml", mode: 0o600 },
          { source: join(home, "link.yml"), target: "/root/.ssh/config", mode: 0o644 },
        ],
        home,
      }),
    );
    expect(entries.get("/.config/gh/hosts.yml")).toEqual({
      kind: "file",
      path: "/.config/gh/hosts.yml",
      content: Buffer.from("token: x\n"),
      mode: 0o600,
      uid: 0,
      gid: 0,
    });
    expect(entries.get("/.ssh/config")).toMatchObject({ mode: 0o644, content: Buffer.from("token: x\n") });
  });

  it("refuses sources outside the home, directly or through a symlink inside it", async () => {
    const outside = join(dir, "secret");
    writeFileSync(outside, "s3cret");
    symlinkSync(outside, join(home, "innocent"));
    mkdirSync(join(dir, "home2"));
    writeFileSync(join(dir, "home2", "x"), "x");
    for (const source of [outside, join(home, "innocent"), join(home, "..", "secret"), join(dir, "home2", "x")]) {
      const error = await failure(
        workDiskFiles({ publicKey: KEY, fileSync: [{ source, target: "/root/s", mode: 0o600 }], home }),
      );
      expect(error).toMatchObject({ kind: "permission-denied", reason: "FILE_SYNC_OUTSIDE_HOME" });
      expect(error.message).toContain(source);
    }
  });

  it("refuses missing sources and dangling symlinks, naming them", async () => {
    symlinkSync(join(home, "gone"), join(home, "dangling"));
    for (const source of [join(home, "nope"), join(home, "dangling")]) {
      const error = await failure(
        workDiskFiles({ publicKey: KEY, fileSync: [{ source, target: "/root/s", mode: 0o600 }], home }),
      );
      expect(error).toMatchObject({ kind: "failed-precondition", reason: "FILE_SYNC_MISSING" });
      expect(error.message).toContain(source);
    }
  });

  it("refuses FIFOs (file_sync copies regular files and directories)", async () => {
    execFileSync("mkfifo", [join(home, "fifo")]);
    expect(
      await failure(
        workDiskFiles({
          publicKey: KEY,
          fileSync: [{ source: join(home, "fifo"), target: "/root/s", mode: 0o600 }],
          home,
        }),
      ),
    ).toMatchObject({ reason: "FILE_SYNC_NOT_REGULAR" });
  });

  it("copies a directory recursively with each file's and directory's own mode, leaving symlinks and FIFOs out", async () => {
    const tree = join(home, ".config", "tool");
    mkdirSync(join(tree, "sub", "deeper"), { recursive: true });
    writeFileSync(join(tree, "config.toml"), "a = 1\n");
    writeFileSync(join(tree, "sub", "run.sh"), "#!/bin/sh\n");
    chmodSync(join(tree, "sub", "run.sh"), 0o755);
    chmodSync(join(tree, "sub"), 0o750);
    writeFileSync(join(dir, "outside"), "secret");
    symlinkSync(join(dir, "outside"), join(tree, "escape")); // outside the home: never read
    symlinkSync(join(tree, "config.toml"), join(tree, "alias")); // inside: left out too (not followed)
    execFileSync("mkfifo", [join(tree, "pipe")]);
    writeFileSync(join(home, "single"), "one");
    const entries = await workDiskFiles({
      publicKey: KEY,
      fileSync: [
        { source: join(home, ".config", "tool"), target: "/root/.config/tool", mode: 0o600 },
        // A file target inside a directory target that the tree does not hold.
        { source: join(home, "single"), target: "/root/.config/tool/extra", mode: 0o640 },
      ],
      home,
    });
    const got = byPath(entries);
    expect([...got.keys()].filter((p) => p.startsWith("/.config")).sort()).toEqual([
      "/.config/tool",
      "/.config/tool/config.toml",
      "/.config/tool/extra",
      "/.config/tool/sub",
      "/.config/tool/sub/deeper",
      "/.config/tool/sub/run.sh",
    ]);
    expect(got.get("/.config/tool/sub")).toMatchObject({ kind: "directory", mode: 0o750, uid: 0, gid: 0 });
    expect(got.get("/.config/tool/sub/run.sh")).toMatchObject({ kind: "file", mode: 0o755 });
    expect(got.get("/.config/tool/config.toml")).toMatchObject({ kind: "file", mode: 0o644 & ~process.umask() });
    expect(
      text(
        entries.filter((e) => e.kind === "file"),
        "/.config/tool/extra",
      ),
    ).toBe("one");
    expect(got.get("/.config/tool/extra")).toMatchObject({ mode: 0o640 });

    // The tree holding another entry's target is a conflict.
    writeFileSync(join(tree, "extra"), "clash");
    expect(
      await failure(
        workDiskFiles({
          publicKey: KEY,
          fileSync: [
            { source: tree, target: "/root/.config/tool", mode: 0o600 },
            { source: join(home, "single"), target: "/root/.config/tool/extra", mode: 0o640 },
          ],
          home,
        }),
      ),
    ).toMatchObject({ reason: "FILE_SYNC_TARGET_CONFLICT" });
  });

  it("holds a directory to its limits: entries, depth, bytes, and names debugfs can take", async () => {
    const sync = (source: string) =>
      failure(workDiskFiles({ publicKey: KEY, fileSync: [{ source, target: "/root/d", mode: 0o600 }], home }));
    const many = join(home, "many");
    mkdirSync(many);
    for (let i = 0; i < FILE_SYNC_MAX_ENTRIES; i++) writeFileSync(join(many, `f${i}`), "");
    expect(await sync(many)).toMatchObject({ kind: "failed-precondition", reason: "FILE_SYNC_TOO_LARGE" });
    rmSync(join(many, "f0"));
    // The directory itself and FILE_SYNC_MAX_ENTRIES - 1 files: exactly at the limit.
    const atLimit = await workDiskFiles({
      publicKey: KEY,
      fileSync: [{ source: many, target: "/root/d", mode: 0o600 }],
      home,
    });
    expect(atLimit.filter((e) => e.path.startsWith("/d")).length).toBe(FILE_SYNC_MAX_ENTRIES);

    const deep = join(home, "deep");
    mkdirSync(join(deep, ...Array.from({ length: FILE_SYNC_MAX_DEPTH + 1 }, (_, i) => `l${i}`)), { recursive: true });
    const tooDeep = await sync(deep);
    expect([tooDeep.reason, tooDeep.message]).toEqual(["FILE_SYNC_TOO_LARGE", expect.stringContaining("deeper")]);

    const heavy = join(home, "heavy");
    mkdirSync(heavy);
    for (let i = 0; i < 9; i++) sparse(join(heavy, `part${i}`), FILE_SYNC_MAX_FILE_BYTES);
    const tooHeavy = await sync(heavy);
    expect([tooHeavy.reason, tooHeavy.message]).toEqual(["FILE_SYNC_TOO_LARGE", expect.stringContaining("add up")]);

    const odd = join(home, "odd");
    mkdirSync(odd);
    writeFileSync(join(odd, "has space"), "");
    expect(await sync(odd)).toMatchObject({ kind: "invalid-argument", reason: "FILE_SYNC_INVALID_TARGET" });
  });

  it("refuses a source larger than 8 MiB and takes one of exactly 8 MiB", async () => {
    const big = join(home, "big");
    sparse(big, FILE_SYNC_MAX_FILE_BYTES + 1);
    const error = await failure(
      workDiskFiles({ publicKey: KEY, fileSync: [{ source: big, target: "/root/big", mode: 0o600 }], home }),
    );
    expect(error).toMatchObject({ kind: "failed-precondition", reason: "FILE_SYNC_TOO_LARGE" });
    expect(error.message).toContain(big);
    truncateSync(big, FILE_SYNC_MAX_FILE_BYTES);
    const entries = await workDiskFiles({
      publicKey: KEY,
      fileSync: [{ source: big, target: "/root/big", mode: 0o600 }],
      home,
    });
    expect(entries).toHaveLength(3);
  });

  it("refuses file_sync sources adding up to more than 64 MiB", async () => {
    const fileSync = Array.from({ length: 9 }, (_, i) => {
      sparse(join(home, `f${i}`), FILE_SYNC_MAX_FILE_BYTES);
      return { source: join(home, `f${i}`), target: `/root/f${i}`, mode: 0o600 };
    });
    expect(await failure(workDiskFiles({ publicKey: KEY, fileSync, home }))).toMatchObject({
      reason: "FILE_SYNC_TOO_LARGE",
    });
  });

  it.runIf(process.getuid?.() !== 0)("refuses a source the owner cannot read", async () => {
    writeFileSync(join(home, "locked"), "x");
    chmodSync(join(home, "locked"), 0);
    expect(
      await failure(
        workDiskFiles({
          publicKey: KEY,
          fileSync: [{ source: join(home, "locked"), target: "/root/l", mode: 0o600 }],
          home,
        }),
      ),
    ).toMatchObject({ kind: "permission-denied", reason: "FILE_SYNC_UNREADABLE" });
  });

  it.each([
    [{ target: "/root/.ssh/authorized_keys" }, "FILE_SYNC_TARGET_CONFLICT"],
    [{ target: "/root/.ssh" }, "FILE_SYNC_TARGET_CONFLICT"],
    [{ target: "/root/.gitconfig" }, "FILE_SYNC_TARGET_CONFLICT"],
    [{ target: "/root/.gitconfig/x" }, "FILE_SYNC_TARGET_CONFLICT"],
    [{ target: "/etc/shadow" }, "FILE_SYNC_INVALID_TARGET"],
    [{ target: "/root/a b" }, "FILE_SYNC_INVALID_TARGET"],
    [{ mode: 0o4755 }, "FILE_SYNC_INVALID_MODE"],
    [{ source: "relative/path" }, "FILE_SYNC_INVALID_SOURCE"],
  ])("refuses the entry %j before reading anything (%s)", async (change, reason) => {
    const entry = { source: join(home, "nope"), target: "/root/ok", mode: 0o600, ...change };
    expect(
      await failure(
        workDiskFiles({
          publicKey: KEY,
          gitIdentity: { name: "Ada", email: "ada@example.com" },
          fileSync: [entry],
          home,
        }),
      ),
    ).toMatchObject({ kind: "invalid-argument", reason });
  });

  it("refuses two entries with the same target or one below another", async () => {
    writeFileSync(join(home, "a"), "a");
    for (const targets of [
      ["/root/a", "/root/a"],
      ["/root/a", "/root/a/b"],
      ["/root/a/b", "/root/a"],
    ]) {
      const fileSync = targets.map((target) => ({ source: join(home, "a"), target, mode: 0o600 }));
      expect(await failure(workDiskFiles({ publicKey: KEY, fileSync, home }))).toMatchObject({
        reason: "FILE_SYNC_TARGET_CONFLICT",
      });
    }
  });
});
