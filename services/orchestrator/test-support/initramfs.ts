/**
 * Fixtures for the guest kit's tests: small ELF files, bzImages around a
 * payload, and a reader for the newc cpio archives the initramfs is made of.
 */
import { gunzipSync } from "node:zlib";
import { KIT_PROGRAMS } from "../src/guest/kit.js";

/** What building the guest kit runs from the host: its programs, and patchelf (ldd is libc's). */
export const KIT_TOOLS = [...KIT_PROGRAMS.map((program) => program.hostPath), "patchelf"];

/**
 * An ELF64 little-endian executable: a header, one PT_LOAD program header
 * (plus PT_INTERP when `dynamic`) and `body` bytes after them; no sections.
 */
export function fakeElf(options: { dynamic?: boolean; body?: number } = {}): Buffer {
  const headers = options.dynamic ? 2 : 1;
  const bodyAt = 64 + 56 * headers;
  const body = options.body ?? 256;
  const file = Buffer.alloc(bodyAt + body, 0);
  file.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0); // ELF, 64-bit, little-endian, version 1
  file.writeUInt16LE(2, 0x10); // ET_EXEC
  file.writeUInt16LE(62, 0x12); // x86-64
  file.writeBigUInt64LE(64n, 0x20); // e_phoff
  file.writeUInt16LE(64, 0x34); // e_ehsize
  file.writeUInt16LE(56, 0x36); // e_phentsize
  file.writeUInt16LE(headers, 0x38); // e_phnum
  file.writeUInt16LE(64, 0x3a); // e_shentsize
  const load = 64;
  file.writeUInt32LE(1, load); // PT_LOAD
  file.writeBigUInt64LE(BigInt(bodyAt), load + 8); // p_offset
  file.writeBigUInt64LE(BigInt(body), load + 32); // p_filesz
  if (options.dynamic) file.writeUInt32LE(3, load + 56); // PT_INTERP
  for (let i = bodyAt; i < file.length; i++) file[i] = i % 251;
  return file;
}

/**
 * A bzImage (boot protocol 2.15) whose payload is `compressed` followed by the
 * 4-byte decompressed size, as the kernel's build appends it.
 */
export function fakeBzImage(compressed: Uint8Array, decompressedSize: number): Buffer {
  const setupSectors = 3;
  const protectedMode = (setupSectors + 1) * 512;
  const payloadOffset = 0x40; // the decompressor's code would sit before the payload
  const trailer = Buffer.alloc(4);
  trailer.writeUInt32LE(decompressedSize);
  const image = Buffer.concat([
    Buffer.alloc(protectedMode + payloadOffset, 0x90),
    compressed,
    trailer,
    Buffer.alloc(64, 0xcc),
  ]);
  image.write("MZ", 0, "latin1");
  image[0x1f1] = setupSectors;
  image.write("HdrS", 0x202, "latin1");
  image.writeUInt16LE(0x020f, 0x206);
  image.writeUInt32LE(payloadOffset, 0x248);
  image.writeUInt32LE(compressed.length + 4, 0x24c);
  return image;
}

export interface NewcEntry {
  readonly name: string;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly nlink: number;
  readonly mtime: number;
  readonly rdevMajor: number;
  readonly rdevMinor: number;
  readonly data: Buffer;
}

/** The entries of a newc cpio archive (gzip'd or not), the trailer excluded. */
export function readNewc(archive: Buffer): NewcEntry[] {
  const bytes = archive[0] === 0x1f && archive[1] === 0x8b ? gunzipSync(archive) : archive;
  const entries: NewcEntry[] = [];
  let at = 0;
  const align = (n: number) => (n + 3) & ~3;
  for (;;) {
    const magic = bytes.toString("latin1", at, at + 6);
    if (magic !== "070701") throw new Error(`no newc header at ${at}: ${JSON.stringify(magic)}`);
    const field = (i: number) => parseInt(bytes.toString("latin1", at + 6 + i * 8, at + 14 + i * 8), 16);
    const nameSize = field(11);
    const fileSize = field(6);
    const name = bytes.toString("utf8", at + 110, at + 110 + nameSize - 1);
    const dataAt = align(at + 110 + nameSize);
    if (name === "TRAILER!!!") return entries;
    entries.push({
      name,
      mode: field(1),
      uid: field(2),
      gid: field(3),
      nlink: field(4),
      mtime: field(5),
      rdevMajor: field(9),
      rdevMinor: field(10),
      data: bytes.subarray(dataAt, dataAt + fileSize),
    });
    at = align(dataAt + fileSize);
  }
}
