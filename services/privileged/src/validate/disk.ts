/** DiskService's fields against their rules (disk.proto): each check touches nothing. */
import { InvalidArgumentError } from "@banger/common/errors";
import type { GuestFileSpec } from "../ops/disk/types.js";
import { validGuestPath } from "./guest-paths.js";

export const LOOP_DEVICE = /^\/dev\/(loop[0-9]{1,4})$/;
export const MAX_GUEST_FILES = 256;
export const MAX_GUEST_FILE_BYTES = 1024 * 1024;
/** Largest uid/gid (2^32 - 1 is "no id"). */
const MAX_GUEST_ID = 2 ** 32 - 2;

/** `/dev/loopN` → `loopN`, or InvalidArgumentError. */
export function loopName(device: string, field: string): string {
  const name = LOOP_DEVICE.exec(device)?.[1];
  if (name === undefined) {
    throw new InvalidArgumentError(`${field} must match ${LOOP_DEVICE.source}`, { reason: "INVALID_LOOP_DEVICE" });
  }
  return name;
}

export function validGuestFiles(files: readonly GuestFileSpec[]): GuestFileSpec[] {
  if (files.length > MAX_GUEST_FILES) {
    throw new InvalidArgumentError(`at most ${MAX_GUEST_FILES} files`, { reason: "TOO_MANY_FILES" });
  }
  return files.map((file, i) => {
    const field = `files[${i}]`;
    validGuestPath(file.path, `${field}.path`);
    if (!(file.content instanceof Uint8Array) || file.content.byteLength > MAX_GUEST_FILE_BYTES) {
      throw new InvalidArgumentError(`${field}.content must be at most ${MAX_GUEST_FILE_BYTES} bytes`, {
        reason: "FILE_TOO_LARGE",
      });
    }
    if (!Number.isInteger(file.mode) || file.mode < 0 || file.mode > 0o7777) {
      throw new InvalidArgumentError(`${field}.mode must be 0–07777`, { reason: "INVALID_MODE" });
    }
    for (const [key, value] of [
      ["uid", file.uid],
      ["gid", file.gid],
    ] as const) {
      if (!Number.isInteger(value) || value < 0 || value > MAX_GUEST_ID) {
        throw new InvalidArgumentError(`${field}.${key} must be 0–${MAX_GUEST_ID}`, { reason: "INVALID_OWNER" });
      }
    }
    return file;
  });
}
