/**
 * ssh2, loaded on the first guest session rather than at bangerd's start: importing it sets up
 * OpenSSL's key machinery (≈16 MB resident) that a daemon with no exec, ssh or workspace call
 * in flight does not need.
 */
import type * as Ssh2 from "ssh2";
import type { Client } from "ssh2";

let loading: Promise<typeof Ssh2> | undefined;
const ssh2 = () => (loading ??= import("ssh2"));

/** A new, unconnected ssh2 client. */
export async function newSshClient(): Promise<Client> {
  return new (await ssh2()).Client();
}

/** A new ed25519 key pair in OpenSSH's formats: the private key file's text and the public key's line. */
export async function newOpenSshKey(comment: string): Promise<{ privateKey: string; publicKey: string }> {
  // `utils` is not among the names node finds in ssh2's CommonJS exports: it is on the default export only.
  const { utils } = (await ssh2()).default;
  const pair = utils.generateKeyPairSync("ed25519", { comment });
  return { privateKey: pair.private, publicKey: pair.public };
}
