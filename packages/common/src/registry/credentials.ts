/**
 * Registry credentials from a Docker `config.json` (also podman's auth.json,
 * same format): `credHelpers[host]`, then `credsStore`, through
 * `docker-credential-<name> get`; then `auths[host]` (`auth` = base64
 * "user:password", or `username`/`password`, or an `identitytoken`).
 * The file is read at each lookup, so a `docker login` made while the puller
 * runs is seen by the next pull.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { FailedPreconditionError } from "../errors.js";
import { DOCKER_HUB_REGISTRY } from "./reference.js";

export type Credentials =
  | { readonly kind: "basic"; readonly username: string; readonly password: string }
  /** An OAuth2 refresh token, exchanged at the token service (`docker login` with an identity provider). */
  | { readonly kind: "identity-token"; readonly token: string };

/** What a credential helper answers. */
export interface HelperCredentials {
  readonly username: string;
  readonly secret: string;
}

/**
 * Runs `docker-credential-<helper> get` with `serverUrl` on stdin and returns
 * what it answers, or undefined when it has nothing for that server.
 */
export type CredentialHelper = (
  helper: string,
  serverUrl: string,
  signal: AbortSignal,
) => Promise<HelperCredentials | undefined>;

/** The config.json Docker itself would read: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. */
export function defaultDockerConfigPath(env: NodeJS.ProcessEnv, home: string): string {
  const dir = env["DOCKER_CONFIG"];
  return dir ? join(dir, "config.json") : join(home, ".docker", "config.json");
}

const DOCKER_HUB_HOSTS = new Set(["docker.io", "index.docker.io", "registry-1.docker.io"]);
/** The key Docker uses for Hub in config.json and with credential helpers. */
export const DOCKER_HUB_SERVER_URL = "https://index.docker.io/v1/";

/** "https://host:5000/v1/" → "host:5000"; Hub's aliases all become registry-1.docker.io. */
/** The registry host a config key, server URL or "host[:port]" names (Docker Hub's aliases folded). */
export function hostOfKey(key: string): string {
  const host = (key.replace(/^[a-z]+:\/\//i, "").split("/")[0] ?? "").toLowerCase();
  return DOCKER_HUB_HOSTS.has(host) ? DOCKER_HUB_REGISTRY : host;
}

function invalidConfig(path: string, why: string, cause?: unknown): FailedPreconditionError {
  return new FailedPreconditionError(`docker config ${path} is not valid: ${why}`, {
    reason: "INVALID_DOCKER_CONFIG",
    ...(cause === undefined ? {} : { cause }),
  });
}

function stringField(entry: Record<string, unknown>, key: string): string | undefined {
  const value = entry[key];
  return typeof value === "string" && value.length > 0 ? value : undefined;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function fromAuthsEntry(path: string, key: string, entry: unknown): Credentials | undefined {
  if (!isRecord(entry)) throw invalidConfig(path, `auths[${JSON.stringify(key)}] is not an object`);
  const identityToken = stringField(entry, "identitytoken");
  if (identityToken !== undefined) return { kind: "identity-token", token: identityToken };
  const auth = stringField(entry, "auth");
  if (auth !== undefined) {
    const decoded = Buffer.from(auth, "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    if (colon <= 0) throw invalidConfig(path, `auths[${JSON.stringify(key)}].auth is not base64 "user:password"`);
    return { kind: "basic", username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
  }
  const username = stringField(entry, "username");
  const password = stringField(entry, "password");
  if (username !== undefined && password !== undefined) return { kind: "basic", username, password };
  return undefined;
}

async function readConfig(path: string): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw invalidConfig(path, `cannot read it (${(error as Error).message})`, error);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw invalidConfig(path, "it is not JSON", error);
  }
  if (!isRecord(json)) throw invalidConfig(path, "it is not a JSON object");
  return json;
}

/**
 * The credentials `configPath` holds for `registry` (host[:port] as in
 * ImageReference.registry), or undefined.
 */
export async function findCredentials(
  configPath: string | undefined,
  registry: string,
  helper: CredentialHelper,
  signal: AbortSignal,
): Promise<Credentials | undefined> {
  if (configPath === undefined) return undefined;
  const config = await readConfig(configPath);
  if (config === undefined) return undefined;
  const host = hostOfKey(registry);

  const helpers = config["credHelpers"];
  let helperName: string | undefined;
  if (helpers !== undefined) {
    if (!isRecord(helpers)) throw invalidConfig(configPath, "credHelpers is not an object");
    for (const [key, name] of Object.entries(helpers)) {
      if (hostOfKey(key) === host && typeof name === "string" && name.length > 0) helperName = name;
    }
  }
  const store = config["credsStore"];
  if (helperName === undefined && typeof store === "string" && store.length > 0) helperName = store;
  if (helperName !== undefined) {
    const serverUrl = host === DOCKER_HUB_REGISTRY ? DOCKER_HUB_SERVER_URL : host;
    const answer = await helper(helperName, serverUrl, signal);
    if (answer !== undefined && answer.secret.length > 0) {
      return answer.username === "<token>"
        ? { kind: "identity-token", token: answer.secret }
        : { kind: "basic", username: answer.username, password: answer.secret };
    }
  }

  const auths = config["auths"];
  if (auths === undefined) return undefined;
  if (!isRecord(auths)) throw invalidConfig(configPath, "auths is not an object");
  for (const [key, entry] of Object.entries(auths)) {
    if (hostOfKey(key) !== host) continue;
    const found = fromAuthsEntry(configPath, key, entry);
    if (found !== undefined) return found;
  }
  return undefined;
}
