import { spawnSync } from "node:child_process";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FailedPreconditionError } from "@banger/common";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ensureSshIdentity, sshIdentityPaths } from "./index.js";
import { openSshPrivateKey, parseOpenSshPrivateKey, publishPrivateKey } from "./ssh-identity.js";

let dir: string;
let configDir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "banger-ssh-"));
  configDir = join(dir, "config", "banger");
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const sshKeygen = spawnSync("ssh-keygen", ["-?"], { encoding: "utf8" }).error === undefined;

/** ssh-keygen's own reading of a key file, or undefined (with a visible note) when it is not installed. */
function keygen(...args: string[]): string | undefined {
  if (!sshKeygen) {
    console.warn(`ssh-keygen not installed: skipping the check "ssh-keygen ${args.join(" ")}"`);
    return undefined;
  }
  const result = spawnSync("ssh-keygen", args, { encoding: "utf8" });
  expect(result.status, result.stderr).toBe(0);
  return result.stdout.trim();
}

async function rejection(promise: Promise<unknown>): Promise<FailedPreconditionError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(FailedPreconditionError);
  return error as FailedPreconditionError;
}

describe("banger's own key", () => {
  it("is generated once, 0600 in a 0700 directory, and reused", async () => {
    const first = await ensureSshIdentity({ configDir });
    const paths = sshIdentityPaths(configDir);
    expect(first.privateKeyPath).toBe(paths.privateKey);
    expect(first.managed).toBe(true);
    expect(first.publicKey).toMatch(/^ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+/]{43} banger$/);
    expect(first.fingerprint).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    expect((await stat(paths.privateKey)).mode & 0o777).toBe(0o600);
    expect((await stat(paths.dir)).mode & 0o777).toBe(0o700);
    expect((await stat(configDir)).mode & 0o777).toBe(0o700);
    expect(await readFile(paths.publicKey, "utf8")).toBe(`${first.publicKey}\n`);
    const keyBytes = await readFile(paths.privateKey);

    const again = await ensureSshIdentity({ configDir });
    expect(again).toEqual(first);
    expect(await readFile(paths.privateKey)).toEqual(keyBytes);
    expect((await readdir(paths.dir)).sort()).toEqual(["id_ed25519", "id_ed25519.pub"]);
  });

  it("is a key ssh accepts: ssh-keygen derives the same public key and fingerprint", async () => {
    const id = await ensureSshIdentity({ configDir });
    const derived = keygen("-y", "-f", id.privateKeyPath);
    if (derived !== undefined) expect(derived).toBe(id.publicKey);
    const listed = keygen("-l", "-f", id.privateKeyPath);
    if (listed !== undefined) expect(listed).toBe(`256 ${id.fingerprint} banger (ED25519)`);
    const listedPub = keygen("-l", "-f", sshIdentityPaths(configDir).publicKey);
    if (listedPub !== undefined) expect(listedPub).toBe(`256 ${id.fingerprint} banger (ED25519)`);
  });

  it("concurrent first uses agree on one key and leave no temp files", async () => {
    const ids = await Promise.all(Array.from({ length: 8 }, () => ensureSshIdentity({ configDir })));
    expect(new Set(ids.map((id) => id.fingerprint)).size).toBe(1);
    expect((await readdir(sshIdentityPaths(configDir).dir)).sort()).toEqual(["id_ed25519", "id_ed25519.pub"]);
    expect((await ensureSshIdentity({ configDir })).fingerprint).toBe(ids[0]?.fingerprint);
  });

  it("publishing never replaces a key another first use already published", async () => {
    const paths = sshIdentityPaths(configDir);
    await mkdir(paths.dir, { recursive: true, mode: 0o700 });
    const [a, b] = [openSshPrivateKey(), openSshPrivateKey()];
    expect(await publishPrivateKey(paths.dir, paths.privateKey, a)).toBe(true);
    expect(await publishPrivateKey(paths.dir, paths.privateKey, b)).toBe(false);
    expect(await readFile(paths.privateKey, "utf8")).toBe(a);
    expect(await readdir(paths.dir)).toEqual(["id_ed25519"]);
    expect((await ensureSshIdentity({ configDir })).publicKey.split(" ")[1]).toBe(
      parseOpenSshPrivateKey(a).toString("base64"),
    );
  });

  it("tightens banger's ssh directory to 0700 and refuses a symlinked key", async () => {
    const paths = sshIdentityPaths(configDir);
    await mkdir(paths.dir, { recursive: true, mode: 0o755 });
    await chmod(paths.dir, 0o755);
    await ensureSshIdentity({ configDir });
    expect((await stat(paths.dir)).mode & 0o777).toBe(0o700);

    await rm(paths.privateKey);
    await writeFile(join(dir, "elsewhere"), openSshPrivateKey(), { mode: 0o600 });
    await symlink(join(dir, "elsewhere"), paths.privateKey);
    const error = await rejection(ensureSshIdentity({ configDir }));
    expect(error.reason).toBe("SSH_KEY_NOT_A_FILE");
    expect(error.message).toContain(paths.privateKey);
  });

  it("refuses a damaged key instead of replacing it", async () => {
    const paths = sshIdentityPaths(configDir);
    await mkdir(paths.dir, { recursive: true, mode: 0o700 });
    await writeFile(paths.privateKey, "garbage\n", { mode: 0o600 });
    const error = await rejection(ensureSshIdentity({ configDir }));
    expect(error.reason).toBe("SSH_KEY_INVALID");
    expect(error.message).toContain(paths.privateKey);
    expect(await readFile(paths.privateKey, "utf8")).toBe("garbage\n");
  });
});

describe("a configured key", () => {
  it("is used as it is, with its public key derived from it", async () => {
    const keyPath = join(dir, "my_key");
    const text = openSshPrivateKey();
    await writeFile(keyPath, text, { mode: 0o600 });
    const id = await ensureSshIdentity({ configDir, configuredKeyPath: keyPath });
    expect(id.privateKeyPath).toBe(keyPath);
    expect(id.managed).toBe(false);
    expect(id.publicKey.split(" ")[1]).toBe(parseOpenSshPrivateKey(text).toString("base64"));
    expect(await readdir(dir)).toEqual(["my_key"]); // nothing generated, nothing written
    const derived = keygen("-y", "-f", keyPath);
    if (derived !== undefined) expect(derived.split(" ").slice(0, 2)).toEqual(id.publicKey.split(" ").slice(0, 2));
  });

  it("accepts a key made by ssh-keygen itself", async () => {
    const keyPath = join(dir, "from_keygen");
    const made = keygen("-q", "-t", "ed25519", "-N", "", "-C", "me@host", "-f", keyPath);
    if (made === undefined) return;
    const id = await ensureSshIdentity({ configDir, configuredKeyPath: keyPath });
    expect(`${id.publicKey.split(" ").slice(0, 2).join(" ")} me@host\n`).toBe(await readFile(`${keyPath}.pub`, "utf8"));
    expect(keygen("-l", "-f", keyPath)).toBe(`256 ${id.fingerprint} me@host (ED25519)`);
  });

  it.each([0o640, 0o604, 0o644, 0o660])("with mode %o is refused, naming the path", async (mode) => {
    const keyPath = join(dir, "loose_key");
    await writeFile(keyPath, openSshPrivateKey());
    await chmod(keyPath, mode);
    const error = await rejection(ensureSshIdentity({ configDir, configuredKeyPath: keyPath }));
    expect(error.reason).toBe("SSH_KEY_PERMISSIONS");
    expect(error.message).toContain(keyPath);
    expect(error.message).toContain(`mode 0${mode.toString(8)}`);
  });

  it("that is missing or not a regular file is refused, naming the path", async () => {
    const missing = join(dir, "nope");
    const e1 = await rejection(ensureSshIdentity({ configDir, configuredKeyPath: missing }));
    expect(e1.reason).toBe("SSH_KEY_NOT_FOUND");
    expect(e1.message).toBe(`SSH private key ${missing} does not exist`);

    const e2 = await rejection(ensureSshIdentity({ configDir, configuredKeyPath: dir }));
    expect(e2.reason).toBe("SSH_KEY_NOT_A_FILE");
    expect(e2.message).toContain(dir);

    const fifo = join(dir, "fifo");
    if (spawnSync("mkfifo", ["-m", "600", fifo]).status === 0) {
      const e3 = await rejection(ensureSshIdentity({ configDir, configuredKeyPath: fifo }));
      expect(e3.reason).toBe("SSH_KEY_NOT_A_FILE");
    }
  });

  it("in PKCS#8 PEM, encrypted or of another type is refused with the reason", async () => {
    const { generateKeyPairSync } = await import("node:crypto");
    const pem = join(dir, "pem_key");
    await writeFile(pem, generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }), {
      mode: 0o600,
    });
    const e1 = await rejection(ensureSshIdentity({ configDir, configuredKeyPath: pem }));
    expect(e1.reason).toBe("SSH_KEY_INVALID");
    expect(e1.message).toMatch(/not in OpenSSH format/);

    if (!sshKeygen) return;
    const encrypted = join(dir, "enc_key");
    keygen("-q", "-t", "ed25519", "-N", "secret-pass", "-f", encrypted);
    const e2 = await rejection(ensureSshIdentity({ configDir, configuredKeyPath: encrypted }));
    expect(e2.message).toMatch(/encrypted with a passphrase/);

    const ecdsa = join(dir, "ecdsa_key");
    keygen("-q", "-t", "ecdsa", "-N", "", "-f", ecdsa);
    const e3 = await rejection(ensureSshIdentity({ configDir, configuredKeyPath: ecdsa }));
    expect(e3.message).toMatch(/ecdsa-sha2-nistp256 key; banger uses ed25519 keys/);
  });
});
