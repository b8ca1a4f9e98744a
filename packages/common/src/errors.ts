/**
 * Typed domain errors. Core code throws these; the gRPC edge maps them to
 * status codes in one place (error-mapping.ts). Nothing here knows gRPC.
 */

export type ErrorKind =
  | "invalid-argument"
  | "not-found"
  | "already-exists"
  | "failed-precondition"
  | "permission-denied"
  | "resource-exhausted"
  | "unavailable"
  | "deadline-exceeded"
  | "cancelled"
  | "unimplemented"
  | "internal";

export interface BangerErrorOptions {
  /** Stable UPPER_SNAKE code for programs, e.g. `VM_NOT_FOUND`. */
  readonly reason?: string;
  readonly cause?: unknown;
}

const REASON_PATTERN = /^[A-Z][A-Z0-9_]{0,62}$/;

export abstract class BangerError extends Error {
  abstract readonly kind: ErrorKind;
  readonly reason: string;

  constructor(message: string, defaultReason: string, options: BangerErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    const reason = options.reason ?? defaultReason;
    if (!REASON_PATTERN.test(reason)) {
      throw new TypeError(`error reason must be UPPER_SNAKE, got ${JSON.stringify(reason)}`);
    }
    this.reason = reason;
  }
}

export class InvalidArgumentError extends BangerError {
  readonly kind = "invalid-argument";
  override readonly name = "InvalidArgumentError";
  constructor(message: string, options?: BangerErrorOptions) {
    super(message, "INVALID_ARGUMENT", options);
  }
}

export class NotFoundError extends BangerError {
  readonly kind = "not-found";
  override readonly name = "NotFoundError";
  constructor(message: string, options?: BangerErrorOptions) {
    super(message, "NOT_FOUND", options);
  }
}

export class AlreadyExistsError extends BangerError {
  readonly kind = "already-exists";
  override readonly name = "AlreadyExistsError";
  constructor(message: string, options?: BangerErrorOptions) {
    super(message, "ALREADY_EXISTS", options);
  }
}

export class FailedPreconditionError extends BangerError {
  readonly kind = "failed-precondition";
  override readonly name = "FailedPreconditionError";
  constructor(message: string, options?: BangerErrorOptions) {
    super(message, "FAILED_PRECONDITION", options);
  }
}

export class PermissionDeniedError extends BangerError {
  readonly kind = "permission-denied";
  override readonly name = "PermissionDeniedError";
  constructor(message: string, options?: BangerErrorOptions) {
    super(message, "PERMISSION_DENIED", options);
  }
}

export class ResourceExhaustedError extends BangerError {
  readonly kind = "resource-exhausted";
  override readonly name = "ResourceExhaustedError";
  constructor(message: string, options?: BangerErrorOptions) {
    super(message, "RESOURCE_EXHAUSTED", options);
  }
}

export class UnavailableError extends BangerError {
  readonly kind = "unavailable";
  override readonly name = "UnavailableError";
  constructor(message: string, options?: BangerErrorOptions) {
    super(message, "UNAVAILABLE", options);
  }
}

export class DeadlineExceededError extends BangerError {
  readonly kind = "deadline-exceeded";
  override readonly name = "DeadlineExceededError";
  constructor(message: string, options?: BangerErrorOptions) {
    super(message, "DEADLINE_EXCEEDED", options);
  }
}

export class CancelledError extends BangerError {
  readonly kind = "cancelled";
  override readonly name = "CancelledError";
  constructor(message: string, options?: BangerErrorOptions) {
    super(message, "CANCELLED", options);
  }
}

export class UnimplementedError extends BangerError {
  readonly kind = "unimplemented";
  override readonly name = "UnimplementedError";
  constructor(message: string, options?: BangerErrorOptions) {
    super(message, "UNIMPLEMENTED", options);
  }
}

export class InternalError extends BangerError {
  readonly kind = "internal";
  override readonly name: string = "InternalError";
  constructor(message: string, options?: BangerErrorOptions) {
    super(message, "INTERNAL", options);
  }
}

/** A host command that failed: keeps the argv, exit code and the tail of stderr. */
export class HostCommandError extends InternalError {
  override readonly name = "HostCommandError";
  readonly argv: readonly string[];
  readonly exitCode: number | null;
  readonly stderrTail: string;

  constructor(argv: readonly string[], exitCode: number | null, stderr: string, options?: BangerErrorOptions) {
    const tail = stderr.trimEnd().split("\n").slice(-5).join("\n");
    const status = exitCode === null ? "was killed" : `exited ${exitCode}`;
    super(`${argv.join(" ")} ${status}${tail ? `: ${tail}` : ""}`, {
      reason: "HOST_COMMAND_FAILED",
      ...options,
    });
    this.argv = argv;
    this.exitCode = exitCode;
    this.stderrTail = tail;
  }
}
