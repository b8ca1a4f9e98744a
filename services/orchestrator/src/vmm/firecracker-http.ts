/**
 * HTTP/1.1 over a Firecracker API socket: one JSON request and its answer, and the
 * wait for the socket to appear. The API calls themselves are in firecracker-client.ts,
 * which also describes the errors.
 */
import { request } from "node:http";
import { connect } from "node:net";
import {
  BangerError,
  CancelledError,
  DeadlineExceededError,
  FailedPreconditionError,
  UnavailableError,
} from "@banger/common";

/** Where and how long: the API socket and the deadline of each request. */
export interface FirecrackerEndpoint {
  readonly socketPath: string;
  readonly timeoutMs: number;
}

export interface FirecrackerCallOptions {
  readonly signal?: AbortSignal;
}

const POLL_INTERVAL_MS = 20;

/** Connection failures that mean "nothing usable at that path", with a plain reading. */
const UNREACHABLE: Record<string, string> = {
  ENOENT: "no socket there",
  ECONNREFUSED: "nothing is listening",
  EACCES: "permission denied",
  ENOTSOCK: "not a socket",
  ECONNRESET: "connection reset",
  EPIPE: "connection closed",
};
/** Failures worth retrying while the VMM is still starting. */
const NOT_YET = new Set(["ENOENT", "ECONNREFUSED"]);

/** One HTTP/1.1 exchange; resolves with the parsed JSON answer, or undefined for an empty one. */
export function firecrackerCall(
  endpoint: FirecrackerEndpoint,
  method: string,
  path: string,
  body: unknown,
  callOptions: FirecrackerCallOptions = {},
): Promise<unknown> {
  const { socketPath, timeoutMs } = endpoint;
  const { signal } = callOptions;
  const what = `firecracker ${method} ${path}`;
  return new Promise<unknown>((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError(signal, what));
      return;
    }
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string | number> = { Accept: "application/json" };
    // Firecracker reads a body by its Content-Length (no chunked encoding).
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      headers["Content-Length"] = Buffer.byteLength(payload);
    }
    let settled = false;
    const finish = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      outcome();
    };
    const req = request({ socketPath, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("error", (error) => finish(() => reject(unreachableError(socketPath, error))));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        const status = res.statusCode ?? 0;
        finish(() => {
          if (status < 200 || status > 299) {
            reject(new FailedPreconditionError(`${what}: ${faultMessage(text, status)}`, { reason: "VMM_API_ERROR" }));
            return;
          }
          if (text.trim() === "") {
            resolve(undefined);
            return;
          }
          try {
            resolve(JSON.parse(text));
          } catch (error) {
            reject(
              new FailedPreconditionError(`${what}: answered ${status} with a body that is not JSON`, {
                reason: "VMM_API_ERROR",
                cause: error,
              }),
            );
          }
        });
      });
    });
    const timer = setTimeout(() => {
      finish(() =>
        reject(
          new DeadlineExceededError(`${what}: no answer within ${timeoutMs} ms on ${socketPath}`, {
            reason: "VMM_API_TIMEOUT",
          }),
        ),
      );
      req.destroy();
    }, timeoutMs);
    const onAbort = () => {
      if (signal) finish(() => reject(abortError(signal, what)));
      req.destroy();
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    req.on("error", (error) => finish(() => reject(unreachableError(socketPath, error))));
    req.end(payload);
  });
}

/**
 * Resolves once the API socket at `socketPath` accepts connections (it appears a
 * moment after the VMM is launched); DeadlineExceededError after `waitMs`.
 */
export async function waitForFirecrackerSocket(socketPath: string, signal: AbortSignal, waitMs: number): Promise<void> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    if (signal.aborted) throw abortError(signal, `waiting for ${socketPath}`);
    const error = await tryConnect(socketPath);
    if (error === undefined) return;
    const code = errnoOf(error);
    if (code === undefined || !NOT_YET.has(code)) throw unreachableError(socketPath, error);
    if (Date.now() >= deadline) {
      throw new DeadlineExceededError(`Firecracker API socket ${socketPath} did not appear within ${waitMs} ms`, {
        reason: "VMM_API_TIMEOUT",
        cause: unreachableError(socketPath, error),
      });
    }
    await sleep(Math.min(POLL_INTERVAL_MS, Math.max(0, deadline - Date.now())), signal);
  }
}

/** A connection failure as an UnavailableError `VMM_API_UNREACHABLE` naming the socket. */
function unreachableError(socketPath: string, error: unknown): UnavailableError {
  const code = errnoOf(error);
  const why = (code !== undefined && UNREACHABLE[code]) || (error instanceof Error ? error.message : String(error));
  return new UnavailableError(`Firecracker API socket ${socketPath} is unreachable: ${why}`, {
    reason: "VMM_API_UNREACHABLE",
    cause: error,
  });
}

/** Firecracker's `fault_message`, or the raw answer when it is not the usual JSON. */
function faultMessage(text: string, status: number): string {
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed === "object" && parsed !== null && "fault_message" in parsed) {
      if (typeof parsed.fault_message === "string") return parsed.fault_message;
    }
  } catch {
    // not JSON: report it as it came
  }
  const trimmed = text.trim();
  return trimmed === "" ? `HTTP ${status}` : `HTTP ${status} ${trimmed.slice(0, 500)}`;
}

/** The error an aborted signal stands for: its reason when that is banger's, else a timeout or a cancellation. */
function abortError(signal: AbortSignal, what: string): BangerError {
  const reason: unknown = signal.reason;
  if (reason instanceof BangerError) return reason;
  if (reason instanceof Error && reason.name === "TimeoutError") {
    return new DeadlineExceededError(`${what}: timed out`, { reason: "VMM_API_TIMEOUT", cause: reason });
  }
  return new CancelledError(`${what}: cancelled`, { cause: reason });
}

function errnoOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/** Connects once and hangs up; resolves with the failure, or undefined when the socket accepted. */
function tryConnect(socketPath: string): Promise<Error | undefined> {
  return new Promise((resolve) => {
    const socket = connect(socketPath);
    socket.once("connect", () => {
      socket.destroy();
      resolve(undefined);
    });
    socket.once("error", (error) => {
      socket.destroy();
      resolve(error);
    });
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
