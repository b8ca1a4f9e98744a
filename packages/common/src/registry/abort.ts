import { BangerError, CancelledError, DeadlineExceededError } from "../errors.js";

/** The error for registry work stopped by `signal`: its own reason when that is banger's, else CANCELLED or DEADLINE_EXCEEDED. */
export function abortError(signal: AbortSignal): BangerError {
  const reason: unknown = signal.reason;
  if (reason instanceof BangerError) return reason;
  if (reason instanceof Error && reason.name === "TimeoutError") {
    return new DeadlineExceededError("the registry operation timed out", { cause: reason });
  }
  return new CancelledError("the registry operation was cancelled", { cause: reason });
}
