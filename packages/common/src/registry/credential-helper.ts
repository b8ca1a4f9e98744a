/**
 * The one process the registry code starts, through the host runner: Docker credential
 * helpers (`docker-credential-<name> get`, server URL on stdin, JSON
 * `{ServerURL, Username, Secret}` on stdout). Tests inject their own
 * CredentialHelper instead.
 */
import { CancelledError, FailedPreconditionError } from "../errors.js";
import { ANY_EXIT_CODE, runProcess, type ProcessResult } from "../host-runner.js";
import type { CredentialHelper, HelperCredentials } from "./credentials.js";
import { abortError } from "./abort.js";
import { CommonReason } from "../reasons.js";

const HELPER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const NOT_FOUND = /credentials not found/i;
const TIMEOUT_MS = 30_000;

function helperFailed(name: string, why: string, cause?: unknown): FailedPreconditionError {
  return new FailedPreconditionError(`credential helper docker-credential-${name} failed: ${why}`, {
    reason: "CREDENTIAL_HELPER_FAILED",
    ...(cause === undefined ? {} : { cause }),
  });
}

export interface ProcessCredentialHelperOptions {
  /** PATH to find `docker-credential-*` in (default: this process's). */
  readonly path?: string;
}

/** A CredentialHelper that runs the real `docker-credential-<name>` programs. */
export function createProcessCredentialHelper(options: ProcessCredentialHelperOptions = {}): CredentialHelper {
  return (name, serverUrl, signal) => {
    if (!HELPER_NAME.test(name)) {
      return Promise.reject(helperFailed(name.slice(0, 64), "the helper name in the docker config is not valid"));
    }
    return askHelper(name, serverUrl, signal, options);
  };
}

async function askHelper(
  name: string,
  serverUrl: string,
  signal: AbortSignal,
  options: ProcessCredentialHelperOptions,
): Promise<HelperCredentials | undefined> {
  let ran: ProcessResult;
  try {
    ran = await runProcess([`docker-credential-${name}`, "get"], {
      env: { ...process.env, ...(options.path === undefined ? {} : { PATH: options.path }) },
      signal: AbortSignal.any([signal, AbortSignal.timeout(TIMEOUT_MS)]),
      stdin: serverUrl,
      okCodes: ANY_EXIT_CODE,
    });
  } catch (error) {
    if (signal.aborted) throw abortError(signal);
    if (error instanceof CancelledError) throw helperFailed(name, `it did not answer within ${TIMEOUT_MS / 1000} s`);
    if (error instanceof FailedPreconditionError && error.reason === CommonReason.HOST_TOOL_MISSING) {
      throw helperFailed(name, "it is not installed (not found in PATH)", error);
    }
    throw helperFailed(name, (error as Error).message, error);
  }
  const stdout = ran.stdout.toString("utf8");
  if (ran.code !== 0) {
    if (NOT_FOUND.test(stdout) || NOT_FOUND.test(ran.stderr)) return undefined;
    throw helperFailed(name, `exited ${ran.code}: ${(ran.stderr || stdout).trim().split("\n").slice(-3).join(" ")}`);
  }
  let answer: unknown;
  try {
    answer = JSON.parse(stdout);
  } catch (error) {
    throw helperFailed(name, "it did not print JSON", error);
  }
  const record = typeof answer === "object" && answer !== null ? (answer as Record<string, unknown>) : {};
  const username = record["Username"];
  const secret = record["Secret"];
  if (typeof username !== "string" || typeof secret !== "string") {
    throw helperFailed(name, "its answer lacks Username or Secret");
  }
  return { username, secret };
}
