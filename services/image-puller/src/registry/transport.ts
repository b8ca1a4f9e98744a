/**
 * HTTP to registries, as one request: the scheme a host gets and redirects
 * (http.ts), the auth challenge dance (auth.ts), and network failures turned
 * into typed errors (responses.ts).
 */
import { authContext, authorization, parseChallenge, type AuthContext, type CredentialLookup } from "./auth.js";
import { baseUrl, send, type FetchFunction } from "./http.js";

export interface TransportOptions {
  readonly insecureRegistries: readonly string[];
  readonly fetch: FetchFunction;
  /** Credentials for `registry`, looked up when it asks for them. */
  readonly credentials: CredentialLookup;
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

export function createTransport(options: TransportOptions): Transport {
  const insecure = new Set(options.insecureRegistries.map((host) => host.toLowerCase()));
  const ctx = authContext({ fetch: options.fetch, insecure }, options.credentials);
  return { request: (registry, req) => request(ctx, registry, req) };
}

/**
 * Sends `req` with the authorization the registry last asked for; on a 401
 * with a challenge, once more with what the challenge asks for.
 */
async function request(ctx: AuthContext, registry: string, req: RegistryRequest): Promise<Response> {
  const url = new URL(`${baseUrl(registry, ctx.insecure)}${req.path}`);
  const headers: Record<string, string> = req.accept === undefined ? {} : { accept: req.accept };
  let sent = await authorization(ctx, registry, req.scope, req.signal);
  let response = await send(ctx, url, { method: req.method, headers }, sent, req.signal);
  if (response.status !== 401) return response;

  const challenge = parseChallenge(response.headers.get("www-authenticate"));
  if (challenge === undefined) return response;
  ctx.challenges.set(registry, challenge);
  const rejected = sent?.replace(/^(Bearer|Basic) /, "");
  const next = await authorization(ctx, registry, req.scope, req.signal, rejected);
  if (next === undefined || next === sent) return response;
  await response.body?.cancel().catch(() => {});
  sent = next;
  response = await send(ctx, url, { method: req.method, headers }, sent, req.signal);
  return response;
}
