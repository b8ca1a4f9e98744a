/**
 * Content digests and the integrity errors raised when content does not
 * match them. Only sha256 is supported (as by every registry in use).
 */
import { createHash } from "node:crypto";
import {
  FailedPreconditionError,
  InternalError,
  UnavailableError,
  type BangerErrorOptions,
} from "@banger/common/errors";

const SHA256_DIGEST = /^sha256:([a-f0-9]{64})$/;

/** Whether `digest` is "sha256:<64 lower-case hex>", the only form banger accepts. */
export function isSha256Digest(digest: string): boolean {
  return SHA256_DIGEST.test(digest);
}

/**
 * The hex part of a sha256 digest. This is the one check a digest passes
 * before it becomes a path component.
 */
export function digestHex(digest: string): string {
  const hex = SHA256_DIGEST.exec(digest)?.[1];
  if (hex === undefined) {
    throw new FailedPreconditionError(
      `unsupported digest ${JSON.stringify(digest.slice(0, 80))}: banger handles "sha256:" followed by 64 hex characters`,
      { reason: "UNSUPPORTED_DIGEST" },
    );
  }
  return hex;
}

export function sha256Digest(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/**
 * Content that does not hash to the digest it was asked for (or has another
 * size than its descriptor says). Reason DIGEST_MISMATCH. It is an
 * InternalError (gRPC INTERNAL) because common's error kinds have no
 * DATA_LOSS; the message says what was expected and what arrived.
 */
export class DigestMismatchError extends InternalError {
  override readonly name = "DigestMismatchError";
  /** The digest that was asked for. */
  readonly expected: string;
  /** What the content hashed to, when it was read to the end. */
  readonly actual: string | undefined;

  constructor(message: string, expected: string, actual?: string, options?: BangerErrorOptions) {
    super(message, { reason: "DIGEST_MISMATCH", ...options });
    this.expected = expected;
    this.actual = actual;
  }
}

/** A blob body that ended before its descriptor's size: retrying may help. */
export function blobTruncated(digest: string, got: number, size: number, cause?: unknown): UnavailableError {
  return new UnavailableError(`download of ${digest} ended after ${got} of ${size} bytes`, {
    reason: "BLOB_TRUNCATED",
    ...(cause === undefined ? {} : { cause }),
  });
}
