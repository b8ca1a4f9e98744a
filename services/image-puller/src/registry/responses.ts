/**
 * Reading a registry's answers: bodies read up to a limit, network failures
 * described (with a hint when a registry speaks plain HTTP), and non-2xx
 * answers turned into typed errors that say what was being fetched.
 */
import {
  BangerError,
  FailedPreconditionError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnavailableError,
} from "@banger/common/errors";

const MAX_ERROR_BODY = 64 * 1024;

export function describeNetworkError(error: unknown): string {
  let current: unknown = error;
  // fetch wraps the socket error: TypeError("fetch failed", { cause }).
  while (current instanceof Error && current.cause instanceof Error) current = current.cause;
  if (current instanceof AggregateError && current.errors[0] instanceof Error) current = current.errors[0];
  const message = current instanceof Error ? current.message : String(current);
  const code = current instanceof Error ? (current as NodeJS.ErrnoException).code : undefined;
  const hint =
    code === "EPROTO" || /wrong version number|packet length too long/i.test(message)
      ? " (does it speak plain HTTP? then list it among the insecure registries)"
      : "";
  return `${message}${hint}`;
}

/** First error of a registry's JSON error body, for messages: "MANIFEST_UNKNOWN: manifest unknown". */
async function errorDetail(response: Response): Promise<string> {
  try {
    const text = Buffer.from(await readLimited(response, MAX_ERROR_BODY)).toString("utf8");
    const json = JSON.parse(text) as { errors?: { code?: unknown; message?: unknown }[] };
    const first = json.errors?.[0];
    if (first === undefined) return "";
    const parts = [first.code, first.message].filter((part): part is string => typeof part === "string");
    return parts.length > 0 ? `: ${parts.join(": ")}` : "";
  } catch {
    return "";
  }
}

/** The body of `response`, at most `max` bytes (else BODY_TOO_LARGE). */
export async function readLimited(response: Response, max: number): Promise<Uint8Array> {
  const announced = Number(response.headers.get("content-length") ?? "0");
  if (announced > max) {
    await response.body?.cancel().catch(() => {});
    throw new FailedPreconditionError(`the registry sent ${announced} bytes where at most ${max} are allowed`, {
      reason: "BODY_TOO_LARGE",
    });
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (response.body === null) return new Uint8Array(0);
  try {
    for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
      total += chunk.byteLength;
      if (total > max) {
        throw new FailedPreconditionError(`the registry sent more than the ${max} bytes allowed`, {
          reason: "BODY_TOO_LARGE",
        });
      }
      chunks.push(chunk);
    }
  } catch (error) {
    if (error instanceof BangerError) throw error;
    throw new UnavailableError(
      `reading from ${new URL(response.url || "http://unknown").host} failed: ${describeNetworkError(error)}`,
      {
        reason: "REGISTRY_UNREACHABLE",
        cause: error,
      },
    );
  }
  return Buffer.concat(chunks);
}

/** What a request was for, to word its errors. */
export interface RequestSubject {
  readonly registry: string;
  readonly repository: string;
  /** "manifest" (404 → MANIFEST_NOT_FOUND) or "blob" (404 → BLOB_NOT_FOUND). */
  readonly kind: "manifest" | "blob";
  /** Tag or digest. */
  readonly target: string;
}

/** The typed error for a non-2xx registry answer. Consumes the body. */
export async function statusError(response: Response, subject: RequestSubject): Promise<BangerError> {
  const detail = await errorDetail(response);
  const name = `${subject.registry}/${subject.repository}`;
  const status = response.status;
  if (status === 401 || status === 403) {
    return new PermissionDeniedError(
      `registry ${subject.registry} denied access to ${name} (HTTP ${status}${detail}); ` +
        "check the credentials for it in the docker config",
      { reason: "REGISTRY_UNAUTHORIZED" },
    );
  }
  if (status === 404) {
    return subject.kind === "manifest"
      ? new NotFoundError(`manifest ${subject.target} not found in ${name}${detail}`, { reason: "MANIFEST_NOT_FOUND" })
      : new NotFoundError(`blob ${subject.target} not found in ${name}${detail}`, { reason: "BLOB_NOT_FOUND" });
  }
  if (status === 429) {
    return new ResourceExhaustedError(`registry ${subject.registry} rate-limits this client (HTTP 429${detail})`, {
      reason: "REGISTRY_RATE_LIMITED",
    });
  }
  if (status >= 500) {
    return new UnavailableError(`registry ${subject.registry} failed (HTTP ${status}${detail})`, {
      reason: "REGISTRY_ERROR",
    });
  }
  return new FailedPreconditionError(
    `registry ${subject.registry} answered HTTP ${status} for ${subject.kind} ${subject.target} of ${name}${detail}`,
    { reason: "REGISTRY_ERROR" },
  );
}
