/**
 * A tiny registry written with node:http, for what a real one will not do:
 * serve a blob whose bytes do not match its digest, cut a download short,
 * redirect blobs to another origin, answer with a schema 1 manifest. It can
 * demand bearer tokens (issued by itself at /token) and records every
 * request with its headers.
 */
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export type BlobBehaviour =
  /** Serve the bytes as given (with their real Content-Length). */
  | "serve"
  /** Announce the full length, send half, then drop the connection. */
  | "truncate"
  /** Announce the full length, send half, then hold the connection open. */
  | "stall"
  /** Answer 307 to `redirectTo` + the request path. */
  | "redirect";

export interface FakeBlob {
  readonly bytes: Buffer;
  readonly behaviour?: BlobBehaviour;
}

export interface FakeManifest {
  readonly bytes: Buffer;
  readonly contentType: string;
  /** Docker-Content-Digest header to send, if any. */
  readonly digestHeader?: string;
}

export interface RecordedRequest {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
}

export interface FakeServer {
  /** "127.0.0.1:<port>". */
  readonly host: string;
  readonly requests: RecordedRequest[];
  stop(): Promise<void>;
}

export interface FakeRegistryOptions {
  /** "repo/manifests/<tag or digest>" → manifest. */
  readonly manifests?: Readonly<Record<string, FakeManifest>>;
  /** digest → blob (any repository). */
  readonly blobs?: Readonly<Record<string, FakeBlob>>;
  /** Origin ("http://127.0.0.1:port") that "redirect" blobs are sent to. */
  readonly redirectTo?: string;
  /** Demand `Authorization: Bearer fake-token` (handed out at /token). */
  readonly requireToken?: boolean;
  /** Demand basic auth with this "user:password" instead. */
  readonly requireBasic?: string;
}

async function listen(server: Server, requests: RecordedRequest[]): Promise<FakeServer> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    host: `127.0.0.1:${port}`,
    requests,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export async function startFakeRegistry(options: FakeRegistryOptions): Promise<FakeServer> {
  const requests: RecordedRequest[] = [];
  const server = createServer((request, response) => {
    const path = new URL(request.url ?? "/", "http://fake").pathname;
    requests.push({ method: request.method ?? "", path, headers: request.headers });
    const host = request.headers.host ?? "";
    if (path === "/token") {
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ token: "fake-token", expires_in: 300 }));
      return;
    }
    if (options.requireToken && request.headers.authorization !== "Bearer fake-token") {
      response.writeHead(401, {
        "www-authenticate": `Bearer realm="http://${host}/token",service="fake",scope="repository:x:pull"`,
        "content-type": "application/json",
      });
      response.end(JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] }));
      return;
    }
    const basic = `Basic ${Buffer.from(options.requireBasic ?? "").toString("base64")}`;
    if (options.requireBasic !== undefined && request.headers.authorization !== basic) {
      response.writeHead(401, { "www-authenticate": 'Basic realm="fake"', "content-type": "application/json" });
      response.end(JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] }));
      return;
    }
    const manifest = /^\/v2\/(.+\/manifests\/[^/]+)$/.exec(path)?.[1];
    if (manifest !== undefined) {
      const found = options.manifests?.[manifest];
      if (found === undefined) {
        response.writeHead(404, { "content-type": "application/json" });
        response.end(JSON.stringify({ errors: [{ code: "MANIFEST_UNKNOWN", message: "manifest unknown" }] }));
        return;
      }
      response.writeHead(200, {
        "content-type": found.contentType,
        "content-length": found.bytes.length,
        ...(found.digestHeader === undefined ? {} : { "docker-content-digest": found.digestHeader }),
      });
      response.end(found.bytes);
      return;
    }
    const digest = /^\/v2\/.+\/blobs\/([^/]+)$/.exec(path)?.[1];
    const blob = digest === undefined ? undefined : options.blobs?.[digest];
    if (blob === undefined) {
      response.writeHead(404, { "content-type": "application/json" });
      response.end(JSON.stringify({ errors: [{ code: "BLOB_UNKNOWN", message: "blob unknown" }] }));
      return;
    }
    switch (blob.behaviour ?? "serve") {
      case "serve":
        response.writeHead(200, { "content-type": "application/octet-stream", "content-length": blob.bytes.length });
        response.end(blob.bytes);
        return;
      case "truncate":
        response.writeHead(200, { "content-type": "application/octet-stream", "content-length": blob.bytes.length });
        response.write(blob.bytes.subarray(0, Math.floor(blob.bytes.length / 2)), () => {
          setTimeout(() => request.socket.destroy(), 20);
        });
        return;
      case "stall":
        response.writeHead(200, { "content-type": "application/octet-stream", "content-length": blob.bytes.length });
        response.write(blob.bytes.subarray(0, Math.floor(blob.bytes.length / 2)));
        return;
      case "redirect":
        response.writeHead(307, { location: `${options.redirectTo ?? ""}${path}` });
        response.end();
        return;
    }
  });
  return listen(server, requests);
}

/** A plain file server standing for a blob store on another origin: serves `blobs` by digest at any path ending in it. */
export async function startBlobStore(blobs: Readonly<Record<string, Buffer>>): Promise<FakeServer> {
  const requests: RecordedRequest[] = [];
  const server = createServer((request, response) => {
    const path = new URL(request.url ?? "/", "http://store").pathname;
    requests.push({ method: request.method ?? "", path, headers: request.headers });
    const digest = path.split("/").pop() ?? "";
    const bytes = blobs[digest];
    if (bytes === undefined) {
      response.writeHead(404);
      response.end();
      return;
    }
    response.writeHead(200, { "content-length": bytes.length });
    response.end(bytes);
  });
  return listen(server, requests);
}
