/**
 * Paths inside a guest filesystem, as the helper hands them to `debugfs`.
 * debugfs splits its command lines on white space and quotes, and reads
 * `<N>` as an inode number, so instead of escaping, the helper accepts only
 * names made of characters debugfs reads literally; anything else is refused.
 */
import { InvalidArgumentError } from "@banger/common/errors";
import { hasControlCharacter } from "./paths.js";

/** Longest guest path accepted, in bytes (Linux PATH_MAX). */
export const MAX_GUEST_PATH_BYTES = 4096;
/** Longest name of one component (ext4's limit). */
const MAX_NAME_BYTES = 255;
/** Characters debugfs reads literally in a path argument. */
const DEBUGFS_SAFE_NAME = /^[A-Za-z0-9._+@=:,~-]+$/;

/**
 * Checks a guest path: absolute, normalised (no `.`/`..` components, no `//`,
 * no trailing slash), not `/`, no NUL, newline or other control character, at
 * most 4096 bytes (255 per component), and only characters debugfs can take
 * without quoting (`A-Z a-z 0-9 . _ + @ = : , ~ -`). Returns the path.
 */
export function validGuestPath(value: string, field = "path"): string {
  if (value.length === 0 || Buffer.byteLength(value) > MAX_GUEST_PATH_BYTES || hasControlCharacter(value)) {
    throw new InvalidArgumentError(`${field} must be 1–${MAX_GUEST_PATH_BYTES} bytes without control characters`, {
      reason: "INVALID_GUEST_PATH",
    });
  }
  if (!value.startsWith("/") || value === "/") {
    throw new InvalidArgumentError(`${field} must be an absolute path below "/"`, { reason: "INVALID_GUEST_PATH" });
  }
  const names = value.slice(1).split("/");
  if (names.some((n) => n === "" || n === "." || n === "..")) {
    throw new InvalidArgumentError(
      `${field} must be normalised (no "." or ".." components, no "//", no trailing "/")`,
      {
        reason: "INVALID_GUEST_PATH",
      },
    );
  }
  if (names.some((n) => Buffer.byteLength(n) > MAX_NAME_BYTES)) {
    throw new InvalidArgumentError(`${field} has a component longer than ${MAX_NAME_BYTES} bytes`, {
      reason: "INVALID_GUEST_PATH",
    });
  }
  if (!names.every((n) => DEBUGFS_SAFE_NAME.test(n))) {
    throw new InvalidArgumentError(
      `${field} may contain only A-Z a-z 0-9 and . _ + @ = : , ~ - (debugfs cannot take other characters safely)`,
      { reason: "UNSUPPORTED_GUEST_PATH" },
    );
  }
  return value;
}

/** The directories above a guest path, outermost first: `/a/b/c` → `/a`, `/a/b`. */
export function guestParents(path: string): string[] {
  const names = path.slice(1).split("/");
  return names.slice(0, -1).map((_, i) => `/${names.slice(0, i + 1).join("/")}`);
}
