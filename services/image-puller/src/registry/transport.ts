/**
 * HTTP to registries: which scheme a host gets, the auth challenge dance
 * (anonymous or credentialed bearer tokens, cached per scope; basic auth),
 * redirects followed by hand so that Authorization never leaves the origin
 * it was meant for, and network failures turned into typed errors.
 */
import { abortError, type Credentials } from "@banger/common/registry";
import { BANGER_VERSION } from "@banger/common/version";
import {
  BangerError,
  FailedPreconditionError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnavailableError,
} from "@banger/common/errors";

export type FetchFunction = typeof globalThis.fetch;

const USER_AGENT = `banger/${BANGER_VERSION}`;
const MAX_REDIRECTS = 10;
const TOKEN_TIMEOUT_MS = 60_000;
const MAX_ERROR_BODY = 64 * 1024;
const MAX_TOKEN_BODY = 1024 * 1024;
/** Tokens are renewed this long before they expire. */
const TOKEN_MARGIN_MS = 10_000;

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

/** One parsed WWW-Authenticate challenge. */
export type Challenge =
  { readonly scheme: "bearer"; readonly realm: string; readonly service?: string } | { readonly scheme: "basic" };

/** Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`. */
export function parseChallenge(header: string | null): Challenge | undefined {
  if (header === null) return undefined;
  const match = /^\s*([A-Za-z]+)\s*(.*)$/s.exec(header);
  if (match === null) return undefined;
  const scheme = (match[1] ?? "").toLowerCase();
  const params = new Map<string, string>();
  const pattern = /([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?\s*/g;
  for (const param of (match[2] ?? "").matchAll(pattern)) {
    const value = param[2] !== undefined ? param[2].replace(/\\(.)/g, "$1") : (param[3] ?? "");
    params.set((param[1] ?? "").toLowerCase(), value);
  }
  if (scheme === "basic") return { scheme: "basic" };
  if (scheme !== "bearer") return undefined;
  const realm = params.get("realm");
  if (realm === undefined || realm.length === 0) return undefined;
  const service = params.get("service");
  return { scheme: "bearer", realm, ...(service === undefined ? {} : { service }) };
}

function describeNetworkError(error: unknown): string {
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

export interface TransportOptions {
  readonly insecureRegistries: readonly string[];
  readonly fetch: FetchFunction;
  /** Credentials for `registry`, looked up when it asks for them. */
  readonly credentials: (registry: string, signal: AbortSignal) => Promise<Credentials | undefined>;
}

export interface RegistryRequest {
  readonly method: "GET" | "HEAD";
  /** Path below the registry root, "/v2/…". */
  readonly path: string;
  readonly accept?: string;
  /** Token scope, "repository:library/debian:pull". */
  readonly scope: string;
  readonly signal: AbortSignal;
}

export interface Transport {
  /**
   * Sends `request` to `registry` with whatever authorization it asks for.
   * Returns the final response (after redirects and at most one
   * re-authentication), whatever its status.
   */
  request(registry: string, request: RegistryRequest): Promise<Response>;
}

interface Token {
  readonly value: string;
  readonly expiresAt: number;
}

export function createTransport(options: TransportOptions): Transport {
  const insecure = new Set(options.insecureRegistries.map((host) => host.toLowerCase()));
  const challenges = new Map<string, Challenge>();
  const tokens = new Map<string, Promise<Token>>();
  /** Basic Authorization header values per registry. */
  const basic = new Map<string, Promise<string | undefined>>();

  function baseUrl(registry: string): string {
    return `${allowsPlainHttp(registry, insecure) ? "http" : "https"}://${registry}`;
  }

  /**
   * fetch with redirects followed by hand: Authorization goes only to
   * `authOrigin`; a redirect may not downgrade to plain HTTP unless the
   * target host is allowed it.
   */
  async function send(
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
        response = await options.fetch(current, {
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
      if (next.protocol === "http:" && current.protocol === "https:" && !allowsPlainHttp(next.host, insecure)) {
        throw new FailedPreconditionError(
          `${current.host} redirected from HTTPS to plain HTTP on ${next.host}, which is not an insecure registry`,
          { reason: "INSECURE_REDIRECT" },
        );
      }
      if (response.status === 303) {
        method = "GET";
        body = undefined;
      }
      current = next;
    }
    throw new UnavailableError(`more than ${MAX_REDIRECTS} redirects from ${url.host}`, { reason: "REGISTRY_ERROR" });
  }

  async function fetchToken(
    registry: string,
    challenge: Extract<Challenge, { scheme: "bearer" }>,
    scope: string,
  ): Promise<Token> {
    const signal = AbortSignal.timeout(TOKEN_TIMEOUT_MS);
    let realm: URL;
    try {
      realm = new URL(challenge.realm);
    } catch (error) {
      throw new UnavailableError(`registry ${registry} named an invalid token realm`, {
        reason: "REGISTRY_ERROR",
        cause: error,
      });
    }
    if (realm.protocol !== "https:" && realm.protocol !== "http:") {
      throw new UnavailableError(`registry ${registry} named a ${realm.protocol} token realm`, {
        reason: "REGISTRY_ERROR",
      });
    }
    const credentials = await options.credentials(registry, signal);
    if (credentials !== undefined && realm.protocol === "http:" && !allowsPlainHttp(realm.host, insecure)) {
      throw new FailedPreconditionError(
        `registry ${registry} wants credentials sent to ${realm.origin} over plain HTTP; refusing`,
        { reason: "INSECURE_TOKEN_REALM" },
      );
    }
    let response: Response;
    if (credentials?.kind === "identity-token") {
      const form = new URLSearchParams({
        grant_type: "refresh_token",
        refresh_token: credentials.token,
        client_id: "banger",
        scope,
        ...(challenge.service === undefined ? {} : { service: challenge.service }),
      });
      response = await send(
        realm,
        { method: "POST", body: form.toString(), headers: { "content-type": "application/x-www-form-urlencoded" } },
        undefined,
        signal,
      );
    } else {
      const url = new URL(realm);
      if (challenge.service !== undefined) url.searchParams.set("service", challenge.service);
      url.searchParams.append("scope", scope);
      const authorization =
        credentials === undefined
          ? undefined
          : `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString("base64")}`;
      response = await send(url, { method: "GET" }, authorization, signal);
    }
    if (response.status === 401 || response.status === 403) {
      await response.body?.cancel().catch(() => {});
      throw new PermissionDeniedError(
        credentials === undefined
          ? `the token service of ${registry} refused an anonymous token for ${scope} (HTTP ${response.status})`
          : `the token service of ${registry} rejected the credentials from the docker config (HTTP ${response.status})`,
        { reason: "REGISTRY_UNAUTHORIZED" },
      );
    }
    if (!response.ok) {
      await response.body?.cancel().catch(() => {});
      throw new UnavailableError(`the token service of ${registry} failed (HTTP ${response.status})`, {
        reason: "REGISTRY_ERROR",
      });
    }
    let json: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      json = JSON.parse(Buffer.from(await readLimited(response, MAX_TOKEN_BODY)).toString("utf8")) as typeof json;
    } catch (error) {
      if (error instanceof BangerError) throw error;
      throw new UnavailableError(`the token service of ${registry} answered something that is not JSON`, {
        reason: "REGISTRY_ERROR",
        cause: error,
      });
    }
    const value = typeof json.token === "string" && json.token ? json.token : json.access_token;
    if (typeof value !== "string" || value.length === 0) {
      throw new UnavailableError(`the token service of ${registry} answered without a token`, {
        reason: "REGISTRY_ERROR",
      });
    }
    // The spec: missing or below 60 s means 60 s.
    const seconds = typeof json.expires_in === "number" && json.expires_in > 60 ? json.expires_in : 60;
    return { value, expiresAt: Date.now() + seconds * 1000 - TOKEN_MARGIN_MS };
  }

  /** A bearer token for `scope`, shared by concurrent callers; `rejected` is one the registry just refused. */
  async function bearer(
    registry: string,
    challenge: Extract<Challenge, { scheme: "bearer" }>,
    scope: string,
    signal: AbortSignal,
    rejected?: string,
  ): Promise<string> {
    const key = `${registry}\n${challenge.realm}\n${challenge.service ?? ""}\n${scope}`;
    for (;;) {
      const pending = tokens.get(key);
      if (pending === undefined) break;
      try {
        const token = await raceAbort(pending, signal);
        if (token.value !== rejected && token.expiresAt > Date.now()) return token.value;
      } catch (error) {
        // Failed fetches leave the map at once, so this one failed just now: report it.
        if (signal.aborted) throw abortError(signal);
        throw error;
      }
      // Expired, or the registry just refused it: fetch another.
      if (tokens.get(key) === pending) tokens.delete(key);
    }
    const fresh = fetchToken(registry, challenge, scope);
    tokens.set(key, fresh);
    fresh.catch(() => {
      if (tokens.get(key) === fresh) tokens.delete(key);
    });
    return (await raceAbort(fresh, signal)).value;
  }

  async function authorization(
    registry: string,
    scope: string,
    signal: AbortSignal,
    rejected?: string,
  ): Promise<string | undefined> {
    const challenge = challenges.get(registry);
    if (challenge === undefined) return undefined;
    if (challenge.scheme === "bearer") return `Bearer ${await bearer(registry, challenge, scope, signal, rejected)}`;
    // Basic: look the credentials up once, and again after the registry refused them.
    const known = basic.get(registry);
    if (known !== undefined && rejected === undefined) return raceAbort(known, signal);
    const pending = options
      .credentials(registry, AbortSignal.timeout(TOKEN_TIMEOUT_MS))
      .then((credentials) =>
        credentials?.kind === "basic"
          ? `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString("base64")}`
          : undefined,
      );
    basic.set(registry, pending);
    pending.catch(() => {
      if (basic.get(registry) === pending) basic.delete(registry);
    });
    return raceAbort(pending, signal);
  }

  async function request(registry: string, req: RegistryRequest): Promise<Response> {
    const url = new URL(`${baseUrl(registry)}${req.path}`);
    const headers: Record<string, string> = req.accept === undefined ? {} : { accept: req.accept };
    let sent = await authorization(registry, req.scope, req.signal);
    let response = await send(url, { method: req.method, headers }, sent, req.signal);
    if (response.status !== 401) return response;

    const challenge = parseChallenge(response.headers.get("www-authenticate"));
    if (challenge === undefined) return response;
    challenges.set(registry, challenge);
    const rejected = sent?.replace(/^(Bearer|Basic) /, "");
    const next = await authorization(registry, req.scope, req.signal, rejected);
    if (next === undefined || next === sent) return response;
    await response.body?.cancel().catch(() => {});
    sent = next;
    response = await send(url, { method: req.method, headers }, sent, req.signal);
    return response;
  }

  return { request };
}
