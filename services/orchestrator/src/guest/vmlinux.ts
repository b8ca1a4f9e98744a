/**
 * vmlinux from a bzImage (a distribution's `vmlinuz`). Firecracker boots
 * only an uncompressed ELF kernel; QEMU's microvm boots either, but a bzImage
 * decompresses itself inside the guest, which under TCG costs seconds (Debian
 * 6.1's xz payload: ~7 s to the root mount against ~2 s for the extracted
 * vmlinux, which QEMU starts through its PVH entry point).
 *
 * The x86 boot protocol (>= 2.08) says where the compressed kernel is:
 * `payload_offset` (0x248) bytes into the protected-mode code, which starts
 * after `(setup_sects + 1) * 512` bytes, `payload_length` (0x24c) long. The
 * payload is vmlinux.bin (the ELF, stripped) plus its relocations, compressed
 * (gzip, xz, zstd, lzma, bzip2 or lz4), followed by 4 bytes giving the
 * decompressed size. The ELF is cut where its last header or segment ends,
 * which drops the relocations.
 */
import { readFile } from "node:fs/promises";
import { compressionOf, decompress, type Compression, type ToolRunner } from "./decompress.js";

export interface ExtractedVmlinux {
  readonly vmlinux: Buffer;
  /** How the bzImage's payload was compressed. */
  readonly compression: Compression;
}

/** Why a file is not a bzImage banger can extract a vmlinux from, or undefined when it is. */
export type NotExtractable = { readonly reason: string };

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

/**
 * The vmlinux inside the bzImage at `path`, or `{ reason }` when the file is
 * not a bzImage with a payload banger can read (too old a boot protocol, an
 * unknown compression, a payload that is not an ELF). Throws when the
 * payload's decompressor is missing (HOST_TOOL_MISSING) or fails.
 */
export async function extractVmlinux(
  path: string,
  options: { signal?: AbortSignal | undefined; run?: ToolRunner | undefined } = {},
): Promise<ExtractedVmlinux | NotExtractable> {
  const image = await readFile(path);
  const payload = bzImagePayload(image);
  if ("reason" in payload) return payload;
  const raw = await decompress(payload.compression, payload.bytes, options);
  const end = elfEnd(raw);
  if (end === undefined) return { reason: `its ${payload.compression} payload is not an ELF64 little-endian kernel` };
  return { vmlinux: raw.subarray(0, end), compression: payload.compression };
}

/** The compressed payload of a bzImage, without the 4-byte size after it. */
export function bzImagePayload(image: Buffer): { bytes: Buffer; compression: Compression } | NotExtractable {
  if (image.length < 0x250 || image.toString("latin1", 0x202, 0x206) !== "HdrS") {
    return { reason: 'it has no x86 boot header ("HdrS" at 0x202)' };
  }
  const version = image.readUInt16LE(0x206);
  if (version < 0x208) {
    return { reason: `its boot protocol ${version >> 8}.${version & 0xff} is older than 2.08 (no payload fields)` };
  }
  const setupSectors = image[0x1f1] || 4;
  const start = (setupSectors + 1) * 512 + image.readUInt32LE(0x248);
  const length = image.readUInt32LE(0x24c);
  if (length <= 4 || start + length > image.length) return { reason: "its payload lies outside the file" };
  const bytes = image.subarray(start, start + length - 4);
  const compression = compressionOf(bytes);
  if (compression === undefined) {
    return { reason: `its payload starts with ${bytes.subarray(0, 4).toString("hex")}, no compression banger knows` };
  }
  return { bytes, compression };
}

/** Where an ELF64 little-endian file's last header table, section or segment ends; undefined if it is not one. */
export function elfEnd(file: Buffer): number | undefined {
  if (file.length < 64 || !file.subarray(0, 4).equals(ELF_MAGIC) || file[4] !== 2 || file[5] !== 1) return undefined;
  const phoff = Number(file.readBigUInt64LE(0x20));
  const shoff = Number(file.readBigUInt64LE(0x28));
  const phentsize = file.readUInt16LE(0x36);
  const phnum = file.readUInt16LE(0x38);
  const shentsize = file.readUInt16LE(0x3a);
  const shnum = file.readUInt16LE(0x3c);
  let end = Math.max(64, phoff + phentsize * phnum, shoff + shentsize * shnum);
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + 56 > file.length) return undefined;
    end = Math.max(end, Number(file.readBigUInt64LE(at + 8)) + Number(file.readBigUInt64LE(at + 32)));
  }
  for (let i = 0; i < shnum; i++) {
    const at = shoff + i * shentsize;
    if (at + 64 > file.length) return undefined;
    // SHT_NOBITS (8) sections take no room in the file.
    if (file.readUInt32LE(at + 4) === 8) continue;
    end = Math.max(end, Number(file.readBigUInt64LE(at + 24)) + Number(file.readBigUInt64LE(at + 32)));
  }
  return end <= file.length ? end : undefined;
}
