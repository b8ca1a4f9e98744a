import { opIdOfError } from "@banger/common/error-mapping";
import { ConnectError } from "@connectrpc/connect";
import { commandOpId } from "./context.js";

/** A mistake in how the command was called: printed with a hint, exit code 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/** A failure already reported to the user (exit code 1, nothing more to print). */
export class ReportedFailure extends Error {
  override readonly name = "ReportedFailure";
}

/** Ends the command with a program's own exit code (`vm ssh` passes ssh's on), printing nothing. */
export class PassExitCode extends Error {
  override readonly name = "PassExitCode";
  constructor(readonly code: number) {
    super(`exit code ${code}`);
  }
}

/** Prints `banger: <message> (op-…)` and returns the exit code. */
export function reportError(error: unknown, write: (line: string) => void = (l) => process.stderr.write(l)): number {
  if (error instanceof ReportedFailure) return 1;
  if (error instanceof PassExitCode) return error.code;
  if (error instanceof UsageError) {
    write(`banger: ${error.message}\nRun 'banger --help' for usage.\n`);
    return 2;
  }
  if (error instanceof ConnectError) {
    write(`banger: ${error.rawMessage} (${opIdOfError(error) ?? commandOpId})\n`);
    return 1;
  }
  const message = error instanceof Error ? error.message : String(error);
  write(`banger: ${message} (${commandOpId})\n`);
  return 1;
}
