import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { BangerError } from "../errors.js";
import { defaultDockerConfigPath, findCredentials, type CredentialHelper } from "./credentials.js";
import { createProcessCredentialHelper } from "./credential-helper.js";

const dir = mkdtempSync(join(tmpdir(), "banger-credentials-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const signal = new AbortController().signal;
let count = 0;

function config(content: unknown): string {
  const path = join(dir, `config-${(count += 1)}.json`);
  writeFileSync(path, typeof content === "string" ? content : JSON.stringify(content));
  return path;
}

const b64 = (text: string): string => Buffer.from(text).toString("base64");
const noHelper: CredentialHelper = () => Promise.reject(new Error("no helper expected"));

async function reasonOf(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
  } catch (error) {
    return error instanceof BangerError ? error.reason : `untyped: ${String(error)}`;
  }
  return undefined;
}

describe("docker config credentials", () => {
  it("reads auths by host, base64 auth or username/password, Hub under its historical key", async () => {
    const path = config({
      auths: {
        "127.0.0.1:5000": { auth: b64("alice:pa:ss") },
        "https://ghcr.io": { username: "bob", password: "pw" },
        "https://index.docker.io/v1/": { auth: b64("hub:secret") },
        "quay.io": { identitytoken: "refresh-me" },
      },
    });
    expect(await findCredentials(path, "127.0.0.1:5000", noHelper, signal)).toEqual({
      kind: "basic",
      username: "alice",
      password: "pa:ss",
    });
    expect(await findCredentials(path, "ghcr.io", noHelper, signal)).toEqual({
      kind: "basic",
      username: "bob",
      password: "pw",
    });
    expect(await findCredentials(path, "registry-1.docker.io", noHelper, signal)).toEqual({
      kind: "basic",
      username: "hub",
      password: "secret",
    });
    expect(await findCredentials(path, "quay.io", noHelper, signal)).toEqual({
      kind: "identity-token",
      token: "refresh-me",
    });
    expect(await findCredentials(path, "127.0.0.1:5001", noHelper, signal)).toBeUndefined();
    expect(await findCredentials(join(dir, "missing.json"), "ghcr.io", noHelper, signal)).toBeUndefined();
    expect(await findCredentials(undefined, "ghcr.io", noHelper, signal)).toBeUndefined();
  });

  it("asks credHelpers for their host, credsStore for the rest, then falls back to auths", async () => {
    const asked: string[] = [];
    const helper: CredentialHelper = (name, serverUrl) => {
      asked.push(`${name} ${serverUrl}`);
      if (name === "ecr" && serverUrl === "1234.dkr.ecr.example.com")
        return Promise.resolve({ username: "AWS", secret: "ecr-pw" });
      if (name === "pass" && serverUrl === "https://index.docker.io/v1/")
        return Promise.resolve({ username: "<token>", secret: "id-tok" });
      return Promise.resolve(undefined);
    };
    const path = config({
      credHelpers: { "1234.dkr.ecr.example.com": "ecr" },
      credsStore: "pass",
      auths: { "ghcr.io": { auth: b64("from:auths") } },
    });
    expect(await findCredentials(path, "1234.dkr.ecr.example.com", helper, signal)).toEqual({
      kind: "basic",
      username: "AWS",
      password: "ecr-pw",
    });
    expect(await findCredentials(path, "registry-1.docker.io", helper, signal)).toEqual({
      kind: "identity-token",
      token: "id-tok",
    });
    expect(await findCredentials(path, "ghcr.io", helper, signal)).toEqual({
      kind: "basic",
      username: "from",
      password: "auths",
    });
    expect(asked).toEqual(["ecr 1234.dkr.ecr.example.com", "pass https://index.docker.io/v1/", "pass ghcr.io"]);
  });

  it("says which file is broken", async () => {
    expect(await reasonOf(findCredentials(config("{not json"), "ghcr.io", noHelper, signal))).toBe(
      "INVALID_DOCKER_CONFIG",
    );
    expect(await reasonOf(findCredentials(config({ auths: [] }), "ghcr.io", noHelper, signal))).toBe(
      "INVALID_DOCKER_CONFIG",
    );
    expect(
      await reasonOf(
        findCredentials(config({ auths: { "ghcr.io": { auth: b64("nocolon") } } }), "ghcr.io", noHelper, signal),
      ),
    ).toBe("INVALID_DOCKER_CONFIG");
  });

  it("finds config.json where docker does", () => {
    expect(defaultDockerConfigPath({}, "/home/u")).toBe("/home/u/.docker/config.json");
    expect(defaultDockerConfigPath({ DOCKER_CONFIG: "/etc/dc" }, "/home/u")).toBe("/etc/dc/config.json");
  });
});

describe("docker-credential-<name> programs", () => {
  const bin = join(dir, "bin");
  const script = (name: string, body: string): void => {
    const path = join(bin, `docker-credential-${name}`);
    writeFileSync(path, `#!/bin/sh\n${body}\n`);
    chmodSync(path, 0o755);
  };
  const helper = createProcessCredentialHelper({ path: `${bin}:/usr/bin:/bin` });

  it("passes the server URL on stdin and reads JSON back", async () => {
    mkdirSync(bin, { recursive: true });
    script(
      "good",
      `read server; [ "$1" = get ] || exit 3; printf '{"ServerURL":"%s","Username":"u-%s","Secret":"s3cret"}' "$server" "$server"`,
    );
    script("none", `echo "credentials not found in native keychain"; exit 1`);
    script("broken", `echo "dbus is down" >&2; exit 2`);
    expect(await helper("good", "reg.example:5000", signal)).toEqual({
      username: "u-reg.example:5000",
      secret: "s3cret",
    });
    expect(await helper("none", "reg.example", signal)).toBeUndefined();
    const broken = await reasonOf(helper("broken", "reg.example", signal));
    expect(broken).toBe("CREDENTIAL_HELPER_FAILED");
    await expect(helper("broken", "reg.example", signal)).rejects.toThrow("dbus is down");
    await expect(helper("missing", "reg.example", signal)).rejects.toThrow("not installed");
    expect(await reasonOf(helper("../../bin/sh", "reg.example", signal))).toBe("CREDENTIAL_HELPER_FAILED");
  });
});
