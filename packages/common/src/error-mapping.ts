/**
 * The one place where domain errors become gRPC statuses and back.
 *
 * Server side: `toConnectError` turns whatever a handler threw into a
 * ConnectError carrying the op id in its metadata (sent as trailers) and a
 * `google.rpc.ErrorInfo` detail. Unknown errors become INTERNAL without their
 * internals; the caller logs them in full.
 *
 * Client side: `fromConnectError` turns a status received from another banger
 * service into the same typed error, so the orchestrator's core sees
 * `UnavailableError`, not a transport detail.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { ErrorInfoSchema } from "@banger/gen/google/rpc/error_details_pb.js";
import {
  AlreadyExistsError,
  BangerError,
  CancelledError,
  DeadlineExceededError,
  FailedPreconditionError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnavailableError,
  UnimplementedError,
  type BangerErrorOptions,
  type ErrorKind,
} from "./errors.js";
import { OP_ID_HEADER } from "./op-id.js";

/** `ErrorInfo.domain` of every error banger sends. */
export const ERROR_DOMAIN = "banger.dev";

const CODE_OF_KIND: Record<ErrorKind, Code> = {
  "invalid-argument": Code.InvalidArgument,
  "not-found": Code.NotFound,
  "already-exists": Code.AlreadyExists,
  "failed-precondition": Code.FailedPrecondition,
  "permission-denied": Code.PermissionDenied,
  "resource-exhausted": Code.ResourceExhausted,
  unavailable: Code.Unavailable,
  "deadline-exceeded": Code.DeadlineExceeded,
  cancelled: Code.Canceled,
  unimplemented: Code.Unimplemented,
  internal: Code.Internal,
};

type ErrorClass = new (message: string, options?: BangerErrorOptions) => BangerError;

const CLASS_OF_CODE: Partial<Record<Code, ErrorClass>> = {
  [Code.InvalidArgument]: InvalidArgumentError,
  [Code.OutOfRange]: InvalidArgumentError,
  [Code.NotFound]: NotFoundError,
  [Code.AlreadyExists]: AlreadyExistsError,
  [Code.FailedPrecondition]: FailedPreconditionError,
  [Code.Aborted]: FailedPreconditionError,
  [Code.PermissionDenied]: PermissionDeniedError,
  [Code.Unauthenticated]: PermissionDeniedError,
  [Code.ResourceExhausted]: ResourceExhaustedError,
  [Code.Unavailable]: UnavailableError,
  [Code.DeadlineExceeded]: DeadlineExceededError,
  [Code.Canceled]: CancelledError,
  [Code.Unimplemented]: UnimplementedError,
};

export function codeOfKind(kind: ErrorKind): Code {
  return CODE_OF_KIND[kind];
}

/** The gRPC code name used in logs and JSON output: `ok`, `unavailable`, `failed_precondition`… */
export function codeName(code: Code | undefined): string {
  return code === undefined ? "ok" : codeToString(code);
}

/** What a client is told about `error`: its code, stable reason and message. */
export interface ErrorStatus {
  readonly code: Code;
  readonly reason: string;
  readonly message: string;
}

/**
 * The status for `error`: the code follows the domain kind; a ConnectError
 * thrown by a library keeps its code; anything else is INTERNAL with a generic
 * message (its internals stay in the log).
 */
export function statusOf(error: unknown): ErrorStatus {
  if (error instanceof BangerError) {
    return { code: CODE_OF_KIND[error.kind], reason: error.reason, message: error.message };
  }
  if (error instanceof ConnectError) {
    const reason = error.findDetails(ErrorInfoSchema)[0]?.reason;
    return {
      code: error.code,
      reason: reason ?? codeToString(error.code).toUpperCase(),
      message: error.rawMessage,
    };
  }
  return { code: Code.Internal, reason: "INTERNAL", message: "internal error (details are in the service log)" };
}

/** The ConnectError a server sends for `error`: the op id in trailers and in an ErrorInfo detail. */
export function toConnectError(error: unknown, opId: string): ConnectError {
  const { code, reason, message } = statusOf(error);
  const metadata = new Headers({ [OP_ID_HEADER]: opId });
  const detail = {
    desc: ErrorInfoSchema,
    value: { reason, domain: ERROR_DOMAIN, metadata: { op_id: opId } },
  };
  return new ConnectError(message, code, metadata, [detail], error);
}

/** The op id a received error carries (ErrorInfo first, then trailers). */
export function opIdOfError(error: ConnectError): string | undefined {
  const info = error.findDetails(ErrorInfoSchema)[0];
  return info?.metadata["op_id"] ?? error.metadata.get(OP_ID_HEADER) ?? undefined;
}

/** The typed error for a status received from another banger service. */
export function fromConnectError(error: ConnectError): BangerError {
  const info = error.findDetails(ErrorInfoSchema)[0];
  const options: BangerErrorOptions = info ? { receivedReason: info.reason, cause: error } : { cause: error };
  const ErrorType = CLASS_OF_CODE[error.code] ?? InternalError;
  try {
    return new ErrorType(error.rawMessage, options);
  } catch {
    // A reason that is not UPPER_SNAKE came from a foreign peer: keep the code, drop the reason.
    return new ErrorType(error.rawMessage, { cause: error });
  }
}
