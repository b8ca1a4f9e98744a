/**
 * HTTP to registries: which scheme a host gets (HTTPS, plain HTTP only for
 * loopback and the insecure registries), and redirects followed by hand so
 * that Authorization never leaves the origin it was meant for and HTTPS is
 * never downgraded to a host not allowed plain HTTP.
 */
import { abortError } from "@banger/common/registry";
import { BANGER_VERSION } from "@banger/common/version";
import { FailedPreconditionError, UnavailableError } from "@banger/common/errors";
import { describeNetworkError } from "./responses.js";

export type FetchFunction = typeof globalThis.fetch;

const USER_AGENT = `banger/${BANGER_VERSION}`;
const MAX_REDIRECTS = 10;

/** What sending needs: the fetch to use and the hosts allowed plain HTTP (lower case). */
export interface HttpContext {
  readonly fetch: FetchFunction;
  readonly insecure: ReadonlySet<string>;
}

/** `promise`, or the abort error as soon as `signal` fires, whichever comes first. */
export function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(abortError(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortError(signal));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}

/**
 * Whether `host` ("host[:port]") may be spoken to over plain HTTP: loopback
 * (127.0.0.0/8, ::1, localhost) always, other hosts when listed in
 * `insecure` (an entry without a port admits every port of that host).
 */
export function allowsPlainHttp(host: string, insecure: ReadonlySet<string>): boolean {
  let hostname: string;
  try {
    hostname = new URL(`http://${host}`).hostname.toLowerCase();
  } catch {
    return false;
  }
  if (hostname === "localhost" || hostname === "[::1]" || /^127\.[0-9]+\.[0-9]+\.[0-9]+$/.test(hostname)) return true;
  const lower = host.toLowerCase();
  return insecure.has(lower) || insecure.has(hostname) || insecure.has(hostname.replace(/^\[|\]$/g, ""));
}

/** The registry's root URL: HTTPS, or plain HTTP where the host is allowed it. */
export function baseUrl(registry: string, insecure: ReadonlySet<string>): string {
  return `${allowsPlainHttp(registry, insecure) ? "http" : "https"}://${registry}`;
}

/** Where a redirect from `current` to `location` goes: an http(s) URL, never from HTTPS to a host not allowed plain HTTP. */
function nextHop(ctx: HttpContext, current: URL, location: string): URL {
  let next: URL;
  try {
    next = new URL(location, current);
  } catch (error) {
    throw new UnavailableError(`${current.host} redirected to an invalid location`, {
      reason: "REGISTRY_ERROR",
      cause: error,
    });
  }
  if (next.protocol !== "https:" && next.protocol !== "http:") {
    throw new FailedPreconditionError(`${current.host} redirected to a ${next.protocol} URL`, {
      reason: "INSECURE_REDIRECT",
    });
  }
  if (next.protocol === "http:" && current.protocol === "https:" && !allowsPlainHttp(next.host, ctx.insecure)) {
    throw new FailedPreconditionError(
      `${current.host} redirected from HTTPS to plain HTTP on ${next.host}, which is not an insecure registry`,
      { reason: "INSECURE_REDIRECT" },
    );
  }
  return next;
}

/**
 * fetch with redirects followed by hand: Authorization goes only to
 * `authOrigin`; a redirect may not downgrade to plain HTTP unless the
 * target host is allowed it.
 */
export async function send(
  ctx: HttpContext,
  url: URL,
  init: RequestInit,
  authorization: string | undefined,
  signal: AbortSignal,
): Promise<Response> {
  const authOrigin = url.origin;
  const { method: firstMethod, body: firstBody, ...rest } = init;
  let current = url;
  let method = firstMethod ?? "GET";
  let body = firstBody;
  for (let hop = 0; hop <= MAX_REDIRECTS; hop += 1) {
    const headers = new Headers(rest.headers);
    headers.set("user-agent", USER_AGENT);
    if (authorization !== undefined && current.origin === authOrigin) headers.set("authorization", authorization);
    let response: Response;
    try {
      response = await ctx.fetch(current, {
        ...rest,
        method,
        headers,
        ...(body === undefined ? {} : { body }),
        redirect: "manual",
        signal,
      });
    } catch (error) {
      if (signal.aborted) throw abortError(signal);
      throw new UnavailableError(`registry host ${current.host} is unreachable: ${describeNetworkError(error)}`, {
        reason: "REGISTRY_UNREACHABLE",
        cause: error,
      });
    }
    const location = response.headers.get("location");
    if (![301, 302, 303, 307, 308].includes(response.status) || location === null) return response;
    await response.body?.cancel().catch(() => {});
    const next = nextHop(ctx, current, location);
    if (response.status === 303) {
      method = "GET";
      body = undefined;
    }
    current = next;
  }
  throw new UnavailableError(`more than ${MAX_REDIRECTS} redirects from ${url.host}`, { reason: "REGISTRY_ERROR" });
}
