/**
 * The auth challenge dance: anonymous or credentialed bearer tokens (fetched
 * from the realm the registry names, cached per scope and shared by
 * concurrent callers), basic auth looked up once per registry.
 */
import { abortError, type Credentials } from "@banger/common/registry";
import { BangerError, FailedPreconditionError, PermissionDeniedError, UnavailableError } from "@banger/common/errors";
import { allowsPlainHttp, raceAbort, send, type HttpContext } from "./http.js";
import { readLimited } from "./responses.js";

const TOKEN_TIMEOUT_MS = 60_000;
const MAX_TOKEN_BODY = 1024 * 1024;
/** Tokens are renewed this long before they expire. */
const TOKEN_MARGIN_MS = 10_000;

/** Credentials for `registry`, looked up when it asks for them. */
export type CredentialLookup = (registry: string, signal: AbortSignal) => Promise<Credentials | undefined>;

interface Token {
  readonly value: string;
  readonly expiresAt: number;
}

/** The transport's auth state: the challenge each registry sent, tokens per scope, basic headers per registry. */
export interface AuthContext extends HttpContext {
  readonly credentials: CredentialLookup;
  readonly challenges: Map<string, Challenge>;
  readonly tokens: Map<string, Promise<Token>>;
  /** Basic Authorization header values per registry. */
  readonly basic: Map<string, Promise<string | undefined>>;
}

export function authContext(http: HttpContext, credentials: CredentialLookup): AuthContext {
  return { ...http, credentials, challenges: new Map(), tokens: new Map(), basic: new Map() };
}

/** One parsed WWW-Authenticate challenge. */
export type Challenge =
  { readonly scheme: "bearer"; readonly realm: string; readonly service?: string } | { readonly scheme: "basic" };

type BearerChallenge = Extract<Challenge, { scheme: "bearer" }>;

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

/** The token realm a challenge names, as a URL: http(s) only. */
function tokenRealm(registry: string, challenge: BearerChallenge): URL {
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
  return realm;
}

/** Asks the realm for a token: a refresh-token grant with an identity token, else a GET (basic auth when credentialed). */
async function askForToken(
  ctx: AuthContext,
  realm: URL,
  challenge: BearerChallenge,
  scope: string,
  credentials: Credentials | undefined,
  signal: AbortSignal,
): Promise<Response> {
  if (credentials?.kind === "identity-token") {
    const form = new URLSearchParams({
      grant_type: "refresh_token",
      refresh_token: credentials.token,
      client_id: "banger",
      scope,
      ...(challenge.service === undefined ? {} : { service: challenge.service }),
    });
    return send(
      ctx,
      realm,
      { method: "POST", body: form.toString(), headers: { "content-type": "application/x-www-form-urlencoded" } },
      undefined,
      signal,
    );
  }
  const url = new URL(realm);
  if (challenge.service !== undefined) url.searchParams.set("service", challenge.service);
  url.searchParams.append("scope", scope);
  const authorization =
    credentials === undefined
      ? undefined
      : `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString("base64")}`;
  return send(ctx, url, { method: "GET" }, authorization, signal);
}

/** The token in the token service's JSON answer, and when to renew it. */
async function readToken(registry: string, response: Response): Promise<Token> {
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

async function fetchToken(
  ctx: AuthContext,
  registry: string,
  challenge: BearerChallenge,
  scope: string,
): Promise<Token> {
  const signal = AbortSignal.timeout(TOKEN_TIMEOUT_MS);
  const realm = tokenRealm(registry, challenge);
  const credentials = await ctx.credentials(registry, signal);
  if (credentials !== undefined && realm.protocol === "http:" && !allowsPlainHttp(realm.host, ctx.insecure)) {
    throw new FailedPreconditionError(
      `registry ${registry} wants credentials sent to ${realm.origin} over plain HTTP; refusing`,
      { reason: "INSECURE_TOKEN_REALM" },
    );
  }
  const response = await askForToken(ctx, realm, challenge, scope, credentials, signal);
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
  return readToken(registry, response);
}

/** A bearer token for `scope`, shared by concurrent callers; `rejected` is one the registry just refused. */
async function bearer(
  ctx: AuthContext,
  registry: string,
  challenge: BearerChallenge,
  scope: string,
  signal: AbortSignal,
  rejected?: string,
): Promise<string> {
  const key = `${registry}\n${challenge.realm}\n${challenge.service ?? ""}\n${scope}`;
  for (;;) {
    const pending = ctx.tokens.get(key);
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
    if (ctx.tokens.get(key) === pending) ctx.tokens.delete(key);
  }
  const fresh = fetchToken(ctx, registry, challenge, scope);
  ctx.tokens.set(key, fresh);
  fresh.catch(() => {
    if (ctx.tokens.get(key) === fresh) ctx.tokens.delete(key);
  });
  return (await raceAbort(fresh, signal)).value;
}

/** The Authorization header `registry` asked for (none before it asked); `rejected` is a value it just refused. */
export async function authorization(
  ctx: AuthContext,
  registry: string,
  scope: string,
  signal: AbortSignal,
  rejected?: string,
): Promise<string | undefined> {
  const challenge = ctx.challenges.get(registry);
  if (challenge === undefined) return undefined;
  if (challenge.scheme === "bearer") return `Bearer ${await bearer(ctx, registry, challenge, scope, signal, rejected)}`;
  // Basic: look the credentials up once, and again after the registry refused them.
  const known = ctx.basic.get(registry);
  if (known !== undefined && rejected === undefined) return raceAbort(known, signal);
  const pending = ctx
    .credentials(registry, AbortSignal.timeout(TOKEN_TIMEOUT_MS))
    .then((credentials) =>
      credentials?.kind === "basic"
        ? `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString("base64")}`
        : undefined,
    );
  ctx.basic.set(registry, pending);
  pending.catch(() => {
    if (ctx.basic.get(registry) === pending) ctx.basic.delete(registry);
  });
  return raceAbort(pending, signal);
}
