/**
 * A Docker token service for tests. It signs ES256 JWTs with a key whose
 * self-signed certificate (made by `openssl`) the registry trusts through
 * `auth.token.rootcertbundle`; each token carries that certificate in its
 * `x5c` header, which is how distribution finds the key.
 *
 * Policy: a known user (basic auth) or a known refresh token gets every
 * action it asks for; anyone gets `pull` on repositories under `public/`;
 * others get a token without access (the registry then answers 401). Wrong
 * credentials get 401 here.
 */
import { execFileSync } from "node:child_process";
import { createPrivateKey, randomUUID, sign, X509Certificate, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";

export interface TokenRequestRecord {
  readonly method: string;
  readonly scopes: readonly string[];
  readonly authorization: string | undefined;
  readonly status: number;
}

export interface TokenServer {
  readonly realm: string;
  readonly service: string;
  readonly issuer: string;
  readonly certPath: string;
  readonly requests: TokenRequestRecord[];
  stop(): Promise<void>;
}

export interface TokenServerOptions {
  /** Directory for the key and certificate. */
  readonly dir: string;
  /** user → password. */
  readonly users: Readonly<Record<string, string>>;
  /** Refresh tokens (identity tokens) accepted by the OAuth2 POST flow. */
  readonly refreshTokens?: readonly string[];
}

const b64url = (value: Buffer | string): string => Buffer.from(value).toString("base64url");

function makeToken(key: KeyObject, certDer: Buffer, claims: Record<string, unknown>): string {
  const header = { typ: "JWT", alg: "ES256", x5c: [certDer.toString("base64")] };
  const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = sign("sha256", Buffer.from(signingInput), { key, dsaEncoding: "ieee-p1363" });
  return `${signingInput}.${b64url(signature)}`;
}

async function readBody(request: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of request) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

export async function startTokenServer(options: TokenServerOptions): Promise<TokenServer> {
  const keyPath = join(options.dir, "token.key");
  const certPath = join(options.dir, "token.crt");
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      keyPath,
      "-out",
      certPath,
      "-days",
      "2",
      "-subj",
      "/CN=banger-test-token-issuer",
    ],
    { stdio: "pipe" },
  );
  const key = createPrivateKey(readFileSync(keyPath));
  const certDer = Buffer.from(new X509Certificate(readFileSync(certPath)).raw);
  const service = "banger-test-registry";
  const issuer = "banger-test-issuer";
  const requests: TokenRequestRecord[] = [];

  const server = createServer((request, response) => {
    void (async () => {
      const url = new URL(request.url ?? "/", "http://token");
      let scopes = url.searchParams.getAll("scope");
      let subject: string | undefined;
      let status = 200;
      const authorization = request.headers.authorization;
      if (request.method === "POST") {
        const form = new URLSearchParams(await readBody(request));
        scopes = form.getAll("scope");
        if ((options.refreshTokens ?? []).includes(form.get("refresh_token") ?? "")) subject = "refresh-user";
        else status = 401;
      } else if (authorization?.startsWith("Basic ")) {
        const [user = "", ...rest] = Buffer.from(authorization.slice(6), "base64").toString("utf8").split(":");
        if (options.users[user] !== undefined && options.users[user] === rest.join(":")) subject = user;
        else status = 401;
      }
      requests.push({ method: request.method ?? "", scopes, authorization, status });
      if (status !== 200) {
        response.writeHead(status, { "content-type": "application/json" });
        response.end(JSON.stringify({ details: "bad credentials" }));
        return;
      }
      const access = scopes.flatMap((scope) => {
        const [type, name, actions] = scope.split(":");
        if (type !== "repository" || name === undefined || actions === undefined) return [];
        const wanted = actions.split(",");
        const granted =
          subject !== undefined ? wanted : name.startsWith("public/") ? wanted.filter((a) => a === "pull") : [];
        return granted.length > 0 ? [{ type, name, actions: granted }] : [];
      });
      const now = Math.floor(Date.now() / 1000);
      const token = makeToken(key, certDer, {
        iss: issuer,
        sub: subject ?? "",
        aud: service,
        exp: now + 300,
        nbf: now - 10,
        iat: now,
        jti: randomUUID(),
        access,
      });
      response.writeHead(200, { "content-type": "application/json" });
      response.end(
        JSON.stringify({ token, access_token: token, expires_in: 300, issued_at: new Date().toISOString() }),
      );
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    realm: `http://127.0.0.1:${port}/token`,
    service,
    issuer,
    certPath,
    requests,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
