/**
 * Typed domain errors. Core code throws these; the gRPC edge maps them to
 * status codes in one place (error-mapping.ts). Nothing here knows gRPC.
 * Reasons are typed: see reasons.ts.
 */
import type { Reason } from "./reasons.js";

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

/** What an error is thrown with. */
export interface ThrownErrorOptions {
  /** Stable UPPER_SNAKE code for programs, e.g. `VM_NOT_FOUND`: one this build declares (reasons.ts). */
  readonly reason?: Reason;
  readonly cause?: unknown;
}

/**
 * What an error received from a peer is rebuilt with (error-mapping.ts only):
 * its reason is the peer's, which this build need not declare.
 */
export interface ReceivedErrorOptions {
  readonly receivedReason: string;
  readonly cause?: unknown;
}

export type BangerErrorOptions = ThrownErrorOptions | ReceivedErrorOptions;

const REASON_PATTERN = /^[A-Z][A-Z0-9_]{0,62}$/;

export abstract class BangerError extends Error {
  abstract readonly kind: ErrorKind;
  readonly reason: string;

  constructor(message: string, defaultReason: Reason, options: BangerErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    const reason = "receivedReason" in options ? options.receivedReason : (options.reason ?? defaultReason);
    if (!REASON_PATTERN.test(reason)) {
      throw new TypeError(`error reason must be UPPER_SNAKE, got ${JSON.stringify(reason)}`);
    }
    this.reason = reason;
  }
}

/**
 * The class of one error kind: the classes below differ only in their kind and their name. The
 * reason they carry when the thrower names none is the kind in UPPER_SNAKE (`NOT_FOUND`).
 * `name` is a plain string so that a subclass (HostCommandError) can name itself.
 */
const DEFAULT_REASON: Readonly<Record<ErrorKind, Reason>> = {
  "invalid-argument": "INVALID_ARGUMENT",
  "not-found": "NOT_FOUND",
  "already-exists": "ALREADY_EXISTS",
  "failed-precondition": "FAILED_PRECONDITION",
  "permission-denied": "PERMISSION_DENIED",
  "resource-exhausted": "RESOURCE_EXHAUSTED",
  unavailable: "UNAVAILABLE",
  "deadline-exceeded": "DEADLINE_EXCEEDED",
  cancelled: "CANCELLED",
  unimplemented: "UNIMPLEMENTED",
  internal: "INTERNAL",
};

/** What errorOfKind makes: a BangerError of one kind (spelled out so declarations keep the Error type). */
type ErrorOfKind<K extends ErrorKind> = new (
  message: string,
  options?: BangerErrorOptions,
) => BangerError & { readonly kind: K };

function errorOfKind<K extends ErrorKind>(kind: K, name: string): ErrorOfKind<K> {
  const defaultReason = DEFAULT_REASON[kind];
  return class extends BangerError {
    readonly kind: K = kind;
    override readonly name: string = name;
    constructor(message: string, options?: BangerErrorOptions) {
      super(message, defaultReason, options);
    }
  };
}

export class InvalidArgumentError extends errorOfKind("invalid-argument", "InvalidArgumentError") {}
export class NotFoundError extends errorOfKind("not-found", "NotFoundError") {}
export class AlreadyExistsError extends errorOfKind("already-exists", "AlreadyExistsError") {}
export class FailedPreconditionError extends errorOfKind("failed-precondition", "FailedPreconditionError") {}
export class PermissionDeniedError extends errorOfKind("permission-denied", "PermissionDeniedError") {}
export class ResourceExhaustedError extends errorOfKind("resource-exhausted", "ResourceExhaustedError") {}
export class UnavailableError extends errorOfKind("unavailable", "UnavailableError") {}
export class DeadlineExceededError extends errorOfKind("deadline-exceeded", "DeadlineExceededError") {}
export class CancelledError extends errorOfKind("cancelled", "CancelledError") {}
export class UnimplementedError extends errorOfKind("unimplemented", "UnimplementedError") {}
export class InternalError extends errorOfKind("internal", "InternalError") {}

/** A host command that failed: keeps the argv, exit code and the tail of stderr. */
export class HostCommandError extends InternalError {
  override readonly name = "HostCommandError";
  readonly argv: readonly string[];
  readonly exitCode: number | null;
  readonly stderrTail: string;

  constructor(argv: readonly string[], exitCode: number | null, stderr: string, options?: ThrownErrorOptions) {
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
