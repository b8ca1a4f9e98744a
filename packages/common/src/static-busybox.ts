/**
 * The host's static busybox: banger's initramfs carries it (the orchestrator)
 * and so does the built-in image `tiny` (the image puller).
 */
import { readFile } from "node:fs/promises";
import { FailedPreconditionError } from "./errors.js";

/** The static busybox banger uses unless told otherwise (Debian's busybox-static installs it). */
export const DEFAULT_BUSYBOX = "/bin/busybox";

/**
 * Checks that `path` is a statically linked ELF (the initramfs and `tiny` have
 * no shared libraries) and returns its bytes. Errors: FAILED_PRECONDITION
 * BUSYBOX_MISSING, BUSYBOX_NOT_STATIC.
 */
export async function readStaticBusybox(path: string = DEFAULT_BUSYBOX): Promise<Buffer> {
  const hint = "install a static busybox there (Debian, Ubuntu: apt install busybox-static)";
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (error) {
    const code = errnoOf(error);
    if (code === "ENOENT" || code === "ENOTDIR" || code === "EISDIR" || code === "EACCES") {
      throw new FailedPreconditionError(`no busybox at ${path}: ${hint}`, {
        reason: "BUSYBOX_MISSING",
        cause: error,
      });
    }
    throw error;
  }
  const linking = elfLinking(bytes);
  if (linking !== "static") {
    throw new FailedPreconditionError(
      `${path} is ${linking === "dynamic" ? "dynamically linked" : "not an ELF executable"}; banger needs a static one: ${hint}`,
      { reason: linking === "dynamic" ? "BUSYBOX_NOT_STATIC" : "BUSYBOX_MISSING" },
    );
  }
  return bytes;
}

/** "static" for an ELF without a PT_INTERP program header, "dynamic" with one, "not-elf" otherwise. */
export function elfLinking(file: Buffer): "static" | "dynamic" | "not-elf" {
  if (file.length < 52 || file.readUInt32BE(0) !== 0x7f454c46) return "not-elf";
  const is64 = file[4] === 2;
  const little = file[5] === 1;
  const u16 = (at: number) => (little ? file.readUInt16LE(at) : file.readUInt16BE(at));
  const u32 = (at: number) => (little ? file.readUInt32LE(at) : file.readUInt32BE(at));
  const u64 = (at: number) => Number(little ? file.readBigUInt64LE(at) : file.readBigUInt64BE(at));
  const phoff = is64 ? u64(0x20) : u32(0x1c);
  const phentsize = u16(is64 ? 0x36 : 0x2a);
  const phnum = u16(is64 ? 0x38 : 0x2c);
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + 4 > file.length) return "not-elf";
    if (u32(at) === 3) return "dynamic"; // PT_INTERP
  }
  return "static";
}

function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}
