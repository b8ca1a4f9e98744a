/**
 * The one place the registry code starts a process: Docker credential
 * helpers (`docker-credential-<name> get`, server URL on stdin, JSON
 * `{ServerURL, Username, Secret}` on stdout). Tests inject their own
 * CredentialHelper instead.
 */
import { spawn } from "node:child_process";
import { FailedPreconditionError } from "../errors.js";
import type { CredentialHelper, HelperCredentials } from "./credentials.js";
import { abortError } from "./abort.js";

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
    return new Promise<HelperCredentials | undefined>((resolve, reject) => {
      const env = { ...process.env, ...(options.path === undefined ? {} : { PATH: options.path }) };
      const child = spawn(`docker-credential-${name}`, ["get"], {
        env,
        signal: AbortSignal.any([signal, AbortSignal.timeout(TIMEOUT_MS)]),
        stdio: ["pipe", "pipe", "pipe"],
      });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on("data", (chunk: Buffer) => out.push(chunk));
      child.stderr.on("data", (chunk: Buffer) => err.push(chunk));
      child.once("error", (error: NodeJS.ErrnoException) => {
        if (signal.aborted) reject(abortError(signal));
        else if (error.code === "ENOENT") reject(helperFailed(name, "it is not installed (not found in PATH)", error));
        else reject(helperFailed(name, error.message, error));
      });
      child.once("close", (code) => {
        const stdout = Buffer.concat(out).toString("utf8");
        const stderr = Buffer.concat(err).toString("utf8");
        if (code !== 0) {
          if (NOT_FOUND.test(stdout) || NOT_FOUND.test(stderr)) resolve(undefined);
          else
            reject(helperFailed(name, `exited ${code}: ${(stderr || stdout).trim().split("\n").slice(-3).join(" ")}`));
          return;
        }
        let answer: unknown;
        try {
          answer = JSON.parse(stdout);
        } catch (error) {
          reject(helperFailed(name, "it did not print JSON", error));
          return;
        }
        const record = typeof answer === "object" && answer !== null ? (answer as Record<string, unknown>) : {};
        const username = record["Username"];
        const secret = record["Secret"];
        if (typeof username !== "string" || typeof secret !== "string") {
          reject(helperFailed(name, "its answer lacks Username or Secret"));
          return;
        }
        resolve({ username, secret });
      });
      child.stdin.on("error", () => {}); // a helper that exits without reading stdin
      child.stdin.end(serverUrl);
    });
  };
}
