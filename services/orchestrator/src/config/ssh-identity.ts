/**
 * The SSH key banger logs in to guests with: banger's own ed25519 key, generated on
 * first use under the owner's config directory (`<configDir>/ssh/id_ed25519`, 0600,
 * in a 0700 directory, OpenSSH format so `ssh -i` takes it), or a key the config
 * names (`ssh.private_key`). The public key is always derived from the private key.
 */
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { chmod, link, lstat, mkdir, open, readFile, rename, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { FailedPreconditionError, type Reason } from "@banger/common";
import { OrchestratorReason } from "../reasons.js";

export interface SshIdentity {
  /** Absolute path of the private key (what `ssh -i` and ssh2 read). */
  readonly privateKeyPath: string;
  /** OpenSSH one-line public key, `ssh-ed25519 AAAA… banger` (for guests' authorized_keys). */
  readonly publicKey: string;
  /** `SHA256:…`, as `ssh-keygen -l` prints it. */
  readonly fingerprint: string;
  /** Whether banger generated and manages the key (false: the configured one). */
  readonly managed: boolean;
}

/** Where banger's own key lives; nobody joins these paths by hand. */
export function sshIdentityPaths(configDir: string): { dir: string; privateKey: string; publicKey: string } {
  const dir = join(configDir, "ssh");
  return { dir, privateKey: join(dir, "id_ed25519"), publicKey: join(dir, "id_ed25519.pub") };
}

const COMMENT = "banger";
const KEY_TYPE = "ssh-ed25519";
const MAX_KEY_BYTES = 64 * 1024;

/**
 * The configured key when `configuredKeyPath` is given (never created or changed;
 * refused when missing, not a regular file, not the owner's, readable by group or
 * others, or not an unencrypted ed25519 OpenSSH key), else banger's own, created
 * once. Concurrent first uses agree on one key: it is written to a private temp
 * file and published with link(2), which never replaces an existing key.
 */
export async function ensureSshIdentity(options: {
  readonly configDir: string;
  readonly configuredKeyPath?: string | null | undefined;
}): Promise<SshIdentity> {
  if (options.configuredKeyPath != null) {
    const blob = await readPrivateKey(options.configuredKeyPath, { followSymlinks: true });
    return identity(options.configuredKeyPath, blob, false);
  }
  const paths = sshIdentityPaths(options.configDir);
  await ensurePrivateDir(options.configDir, paths.dir);
  let blob: Buffer;
  try {
    blob = await readPrivateKey(paths.privateKey, { followSymlinks: false });
  } catch (error) {
    if (!(error instanceof FailedPreconditionError && error.reason === OrchestratorReason.SSH_KEY_NOT_FOUND))
      throw error;
    await publishPrivateKey(paths.dir, paths.privateKey, openSshPrivateKey());
    blob = await readPrivateKey(paths.privateKey, { followSymlinks: false });
  }
  const result = identity(paths.privateKey, blob, true);
  await writePublicKey(paths.dir, paths.publicKey, `${result.publicKey}\n`);
  return result;
}

/**
 * The key ensureSshIdentity would use, read with the same checks but without
 * creating or changing anything (for `banger doctor`). Errors: those of
 * ensureSshIdentity; SSH_KEY_NOT_FOUND also when banger's own key is not made yet.
 */
export async function readSshIdentity(options: {
  readonly configDir: string;
  readonly configuredKeyPath?: string | null | undefined;
}): Promise<SshIdentity> {
  if (options.configuredKeyPath != null) {
    const blob = await readPrivateKey(options.configuredKeyPath, { followSymlinks: true });
    return identity(options.configuredKeyPath, blob, false);
  }
  const { privateKey } = sshIdentityPaths(options.configDir);
  return identity(privateKey, await readPrivateKey(privateKey, { followSymlinks: false }), true);
}

function identity(privateKeyPath: string, blob: Buffer, managed: boolean): SshIdentity {
  return {
    privateKeyPath,
    publicKey: `${KEY_TYPE} ${blob.toString("base64")} ${COMMENT}`,
    fingerprint: `SHA256:${createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")}`,
    managed,
  };
}

/** The config dir (made 0700 when missing) and banger's own `ssh/` in it, kept 0700 and the owner's. */
async function ensurePrivateDir(configDir: string, dir: string): Promise<void> {
  await mkdir(configDir, { recursive: true, mode: 0o700 });
  await mkdir(dir, { mode: 0o700 }).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== "EEXIST") throw error;
  });
  const st = await lstat(dir);
  if (!st.isDirectory()) {
    throw new FailedPreconditionError(`${dir} must be a directory (banger keeps its SSH key there)`, {
      reason: "SSH_KEY_DIR_UNSAFE",
    });
  }
  if (st.uid !== process.getuid?.()) {
    throw new FailedPreconditionError(`${dir} is owned by uid ${st.uid}, not by the owner`, {
      reason: "SSH_KEY_DIR_UNSAFE",
    });
  }
  if ((st.mode & 0o777) !== 0o700) await chmod(dir, 0o700);
}

/**
 * Publishes `text` as the key at `keyPath` unless a key is already there: written to
 * a 0600 temp file in `dir`, synced, then link(2)ed into place (link never replaces,
 * unlike rename). Returns whether this text became the key.
 */
export async function publishPrivateKey(dir: string, keyPath: string, text: string): Promise<boolean> {
  const temp = join(dir, `.id_ed25519.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
  const file = await open(temp, flags, 0o600);
  let won = true;
  try {
    try {
      await file.chmod(0o600); // exactly 0600 whatever the umask
      await file.writeFile(text);
      await file.sync();
    } finally {
      await file.close();
    }
    await link(temp, keyPath).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "EEXIST") throw error;
      won = false; // another first use published its key: everyone uses that one
    });
  } finally {
    await unlink(temp).catch(() => undefined);
  }
  await syncDir(dir);
  return won;
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** `<key>.pub` beside banger's own key, for people and tools; replaced atomically when it differs. */
async function writePublicKey(dir: string, path: string, line: string): Promise<void> {
  const current = await readFile(path, "utf8").catch(() => undefined);
  if (current === line) return;
  const temp = join(dir, `.id_ed25519.pub.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  await writeFile(temp, line, { mode: 0o644, flag: "wx" });
  await rename(temp, path);
}

/**
 * Reads a private key safely (O_NONBLOCK so a FIFO cannot hang us; checks made on
 * the open descriptor) and returns its public key blob.
 */
async function readPrivateKey(path: string, options: { followSymlinks: boolean }): Promise<Buffer> {
  const fail = (what: string, reason: Reason, cause?: unknown): never => {
    throw new FailedPreconditionError(`SSH private key ${path} ${what}`, {
      reason,
      ...(cause === undefined ? {} : { cause }),
    });
  };
  const flags = constants.O_RDONLY | constants.O_NONBLOCK | (options.followSymlinks ? 0 : constants.O_NOFOLLOW);
  const file = await open(path, flags).catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return fail("does not exist", "SSH_KEY_NOT_FOUND", error);
    if (error.code === "ELOOP") return fail("is a symbolic link", "SSH_KEY_NOT_A_FILE", error);
    return fail(`cannot be opened: ${error.message}`, "SSH_KEY_UNREADABLE", error);
  });
  let text: string;
  try {
    const st = await file.stat();
    if (!st.isFile()) fail("is not a regular file", "SSH_KEY_NOT_A_FILE");
    if (st.uid !== process.getuid?.()) fail(`is owned by uid ${st.uid}, not by the owner`, "SSH_KEY_PERMISSIONS");
    if ((st.mode & 0o077) !== 0) {
      const mode = (st.mode & 0o777).toString(8).padStart(4, "0");
      fail(`is accessible by group or others (mode ${mode}); run chmod 600 ${path}`, "SSH_KEY_PERMISSIONS");
    }
    if (st.size > MAX_KEY_BYTES) fail(`is larger than ${MAX_KEY_BYTES} bytes`, "SSH_KEY_INVALID");
    text = await file.readFile("utf8");
  } finally {
    await file.close();
  }
  try {
    return parseOpenSshPrivateKey(text);
  } catch (error) {
    return fail(`is unusable: ${(error as Error).message}`, "SSH_KEY_INVALID", error);
  }
}

// --- OpenSSH private key format (PROTOCOL.key), unencrypted ed25519 only -------

const BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----";
const END = "-----END OPENSSH PRIVATE KEY-----";
const MAGIC = Buffer.from("openssh-key-v1\0", "latin1");

function sshString(data: Buffer | string): Buffer {
  const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  const length = Buffer.alloc(4);
  length.writeUInt32BE(bytes.length);
  return Buffer.concat([length, bytes]);
}

function uint32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value);
  return out;
}

/** A fresh ed25519 key in OpenSSH's own format (what `ssh-keygen -t ed25519 -N ''` writes). */
export function openSshPrivateKey(): string {
  const jwk = generateKeyPairSync("ed25519").privateKey.export({ format: "jwk" });
  const seed = Buffer.from(jwk.d ?? "", "base64url");
  const pub = Buffer.from(jwk.x ?? "", "base64url");
  const publicBlob = Buffer.concat([sshString(KEY_TYPE), sshString(pub)]);
  const check = randomBytes(4).readUInt32BE();
  let secret = Buffer.concat([
    uint32(check),
    uint32(check),
    sshString(KEY_TYPE),
    sshString(pub),
    sshString(Buffer.concat([seed, pub])),
    sshString(COMMENT),
  ]);
  const pad = (8 - (secret.length % 8)) % 8;
  secret = Buffer.concat([secret, Buffer.from(Array.from({ length: pad }, (_, i) => i + 1))]);
  const body = Buffer.concat([
    MAGIC,
    sshString("none"),
    sshString("none"),
    sshString(""),
    uint32(1),
    sshString(publicBlob),
    sshString(secret),
  ]).toString("base64");
  return `${BEGIN}\n${body.replace(/.{1,70}/g, "$&\n")}${END}\n`;
}

/** Checks an OpenSSH private key file's text and returns its public key blob. */
export function parseOpenSshPrivateKey(text: string): Buffer {
  const trimmed = text.trim();
  if (!trimmed.startsWith(BEGIN) || !trimmed.endsWith(END)) {
    throw new Error(
      trimmed.startsWith("-----BEGIN")
        ? "not in OpenSSH format (ssh cannot use PEM/PKCS#8 ed25519 keys); use a key from ssh-keygen -t ed25519"
        : "not an OpenSSH private key",
    );
  }
  const outer = reader(Buffer.from(trimmed.slice(BEGIN.length, -END.length).replace(/\s+/g, ""), "base64"));
  if (!outer.take(MAGIC.length).equals(MAGIC)) throw new Error("not an OpenSSH private key");
  const cipher = outer.string().toString();
  outer.string(); // kdf name
  outer.string(); // kdf options
  if (cipher !== "none") throw new Error("is encrypted with a passphrase; banger needs an unencrypted key");
  if (outer.uint32() !== 1) throw new Error("holds more than one key");
  const publicBlob = Buffer.from(outer.string());
  const pub = parseBlob(publicBlob);
  // The private section: two equal check words, then the key again with its secret half.
  const inner = reader(outer.string());
  if (inner.uint32() !== inner.uint32()) throw new Error("corrupt private section");
  const type = inner.string().toString();
  const innerPub = inner.string();
  const pair = inner.string();
  if (type !== KEY_TYPE || !innerPub.equals(pub) || pair.length !== 64 || !pair.subarray(32).equals(pub)) {
    throw new Error("private and public parts do not match");
  }
  return publicBlob;
}

function reader(data: Buffer) {
  let offset = 0;
  const take = (n: number): Buffer => {
    if (offset + n > data.length) throw new Error("truncated key data");
    offset += n;
    return data.subarray(offset - n, offset);
  };
  const uint32 = () => take(4).readUInt32BE();
  return { take, uint32, string: () => take(uint32()), remaining: () => data.length - offset };
}

function parseBlob(blob: Buffer): Buffer {
  const r = reader(blob);
  const type = r.string().toString();
  if (type !== KEY_TYPE) throw new Error(`is a ${type || "unknown"} key; banger uses ed25519 keys`);
  const key = r.string();
  if (key.length !== 32 || r.remaining() !== 0) throw new Error("malformed ed25519 public key");
  return key;
}
