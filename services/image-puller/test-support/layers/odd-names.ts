/**
 * A layer holding every kind of name a tar entry can carry, and a reader of
 * what an ext4 image built from it holds (through a read-only loop mount:
 * root only), for tests that the names land byte for byte with their owners,
 * modes, mtimes, links, devices and capabilities.
 */
import { execFileSync } from "node:child_process";
import { lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { RawEntry } from "./raw-tar.js";

const bytes = (...parts: (string | number[] | Buffer)[]) =>
  Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p) : Buffer.from(p as number[]))));

/** security.capability v2 as Debian's ping carries it (cap_net_raw=ep), plus cap_setuid: a 0x80 byte. */
export const PING_CAPABILITY = Buffer.from("0100000280200000000000000000000000000000", "hex");

const ODD_DIR = bytes('dir\nwith "odd"\\ name');
const NON_UTF8 = bytes([0xff, 0xfe]);

/** name (bytes, "/" between components) → what the image must show for it. */
export interface SeenEntry {
  readonly mode: string;
  readonly uid: number;
  readonly gid: number;
  readonly mtime: number;
  readonly nlink?: number;
  readonly content?: string;
  readonly target?: string;
  readonly rdev?: string;
  readonly capability?: string;
}

const hex = (b: Buffer) => b.toString("hex");
const LONG_NAME = "n".repeat(250) + "12345"; // 255 bytes

/** The layer: each entry is named after what it proves. */
export const ODD_LAYER: readonly RawEntry[] = [
  { name: "etc/", type: "directory", mtime: 1_600_000_000 },
  { name: "etc/system-systemd\\x2dcryptsetup.slice", content: "[Unit]\n", mtime: 1_600_000_001 },
  { name: `etc/double"single'`, content: "quotes", mtime: 1_600_000_002 },
  { name: "etc/ spaces around ", content: "spaces", mtime: 1_600_000_003 },
  { name: "etc/new\nline", content: "newline", mtime: 1_600_000_004 },
  { name: "etc/-rf", content: "dash", mtime: 1_600_000_005 },
  { name: "etc/ünïcødé", content: "utf-8", mtime: 1_600_000_006, paxNames: true },
  { name: bytes("etc/", NON_UTF8), content: "not utf-8 (header)", mtime: 1_600_000_007 },
  { name: bytes("etc/pax-", NON_UTF8), content: "not utf-8 (pax)", mtime: 1_600_000_008, paxNames: true },
  { name: `etc/${LONG_NAME}`, content: "255 bytes", mtime: 1_600_000_009 },
  { name: bytes(ODD_DIR, "/"), type: "directory", mode: 0o750, uid: 7, gid: 8, mtime: 1_600_000_010 },
  { name: bytes(ODD_DIR, '/hard "1"\n'), content: "linked", uid: 3, gid: 4, mtime: 1_600_000_011 },
  { name: bytes(ODD_DIR, "/hard\\2 ü"), type: "link", linkname: bytes(ODD_DIR, '/hard "1"\n'), mtime: 1_600_000_011 },
  {
    name: bytes(ODD_DIR, "/sym 'link'\n"),
    type: "symlink",
    linkname: bytes('../etc/"target"\\\n', NON_UTF8),
    mtime: 1_600_000_012,
  },
  { name: "dev/", type: "directory", mtime: 1_600_000_013 },
  { name: 'dev/tty "0"\n', type: "char", devmajor: 4, devminor: 0, mode: 0o620, gid: 5, mtime: 1_600_000_014 },
  { name: "dev/big\\dev", type: "block", devmajor: 259, devminor: 70_000, mode: 0o660, mtime: 1_600_000_015 },
  { name: "dev/-fifo 'x'", type: "fifo", mode: 0o600, mtime: 1_600_000_016 },
  { name: "usr/bin/", type: "directory", mtime: 1_600_000_017 },
  { name: "usr/bin/su-root", content: "setuid", mode: 0o4755, mtime: 1_600_000_018 },
  { name: "usr/bin/su-other", content: "setuid", mode: 0o6755, uid: 1234, gid: 5678, mtime: 1_600_000_019 },
  {
    name: "usr/bin/ping",
    content: "ping",
    mode: 0o755,
    mtime: 1_600_000_020,
    pax: { "SCHILY.xattr.security.capability": PING_CAPABILITY },
  },
];

/** What the image must hold for ODD_LAYER: paths (one byte a character) → entries. */
export function oddExpected(): Map<string, SeenEntry> {
  const l = (b: Buffer | string) => (typeof b === "string" ? Buffer.from(b) : b).toString("latin1");
  const file = (mtime: number, content: string, extra: Partial<SeenEntry> = {}): SeenEntry => ({
    mode: "100644",
    uid: 0,
    gid: 0,
    mtime,
    nlink: 1,
    content,
    ...extra,
  });
  const dir = (mtime: number, extra: Partial<SeenEntry> = {}): SeenEntry => ({
    mode: "40755",
    uid: 0,
    gid: 0,
    mtime,
    ...extra,
  });
  return new Map<string, SeenEntry>([
    ["etc", dir(1_600_000_000)],
    ["etc/system-systemd\\x2dcryptsetup.slice", file(1_600_000_001, "[Unit]\n")],
    [`etc/double"single'`, file(1_600_000_002, "quotes")],
    ["etc/ spaces around ", file(1_600_000_003, "spaces")],
    ["etc/new\nline", file(1_600_000_004, "newline")],
    ["etc/-rf", file(1_600_000_005, "dash")],
    [l("etc/ünïcødé"), file(1_600_000_006, "utf-8")],
    [l(bytes("etc/", NON_UTF8)), file(1_600_000_007, "not utf-8 (header)")],
    [l(bytes("etc/pax-", NON_UTF8)), file(1_600_000_008, "not utf-8 (pax)")],
    [`etc/${LONG_NAME}`, file(1_600_000_009, "255 bytes")],
    [l(ODD_DIR), dir(1_600_000_010, { mode: "40750", uid: 7, gid: 8 })],
    [l(bytes(ODD_DIR, '/hard "1"\n')), file(1_600_000_011, "linked", { uid: 3, gid: 4, nlink: 2 })],
    [l(bytes(ODD_DIR, "/hard\\2 ü")), file(1_600_000_011, "linked", { uid: 3, gid: 4, nlink: 2 })],
    [
      l(bytes(ODD_DIR, "/sym 'link'\n")),
      { mode: "120777", uid: 0, gid: 0, mtime: 1_600_000_012, target: l(bytes('../etc/"target"\\\n', NON_UTF8)) },
    ],
    ["dev", dir(1_600_000_013)],
    ['dev/tty "0"\n', { mode: "20620", uid: 0, gid: 5, mtime: 1_600_000_014, nlink: 1, rdev: "4:0" }],
    ["dev/big\\dev", { mode: "60660", uid: 0, gid: 0, mtime: 1_600_000_015, nlink: 1, rdev: "259:70000" }],
    ["dev/-fifo 'x'", { mode: "10600", uid: 0, gid: 0, mtime: 1_600_000_016, nlink: 1 }],
    ["usr", dir(0)],
    ["usr/bin", dir(1_600_000_017)],
    ["usr/bin/su-root", file(1_600_000_018, "setuid", { mode: "104755" })],
    ["usr/bin/su-other", file(1_600_000_019, "setuid", { mode: "106755", uid: 1234, gid: 5678 })],
    ["usr/bin/ping", file(1_600_000_020, "ping", { mode: "100755", capability: hex(PING_CAPABILITY) })],
  ]);
}

/**
 * Everything under the image's root but lost+found, read through a read-only
 * loop mount: names as bytes, lstat's fields, contents, link targets, and
 * security.capability as debugfs reads it by inode number. "usr" (made by
 * the puller as a parent, no mtime of its own) is reported with mtime 0.
 */
export function seenInImage(image: string): Map<string, SeenEntry> {
  const mount = mkdtempSync(join(tmpdir(), "banger-odd-mount-"));
  execFileSync("mount", ["-o", "ro,loop", image, mount]);
  const seen = new Map<string, SeenEntry>();
  try {
    const walk = (dir: Buffer, prefix: string) => {
      for (const name of readdirSync(dir, { encoding: "buffer" })) {
        const path = prefix + name.toString("latin1");
        if (path === "lost+found") continue;
        const full = Buffer.concat([dir, Buffer.from("/"), name]);
        const st = lstatSync(full);
        const capability = execFileSync("debugfs", ["-R", `ea_get -x <${st.ino}> security.capability`, image], {
          stdio: ["ignore", "pipe", "ignore"],
        }).toString();
        const cap = /= ([0-9a-f ]+)$/m.exec(capability)?.[1]?.replaceAll(" ", "");
        seen.set(path, {
          mode: st.mode.toString(8),
          uid: st.uid,
          gid: st.gid,
          mtime: path === "usr" ? 0 : Math.floor(st.mtimeMs / 1000),
          ...(st.isDirectory() || st.isSymbolicLink() ? {} : { nlink: st.nlink }),
          ...(st.isFile() ? { content: readFileSync(full).toString() } : {}),
          ...(st.isSymbolicLink() ? { target: readlinkSync(full, { encoding: "buffer" }).toString("latin1") } : {}),
          ...(st.isCharacterDevice() || st.isBlockDevice()
            ? { rdev: `${(st.rdev >> 8) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}` }
            : {}),
          ...(cap ? { capability: cap } : {}),
        });
        if (st.isDirectory()) walk(full, `${path}/`);
      }
    };
    walk(Buffer.from(mount), "");
  } finally {
    execFileSync("umount", [mount]);
    rmdirSync(mount);
  }
  return seen;
}
