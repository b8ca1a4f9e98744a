/**
 * ssh2, loaded on the first guest session rather than at bangerd's start: importing it sets up
 * OpenSSL's key machinery (≈16 MB resident) that a daemon with no exec, ssh or workspace call
 * in flight does not need.
 */
import type { Client } from "ssh2";

let loading: Promise<typeof Client> | undefined;

/** A new, unconnected ssh2 client. */
export async function newSshClient(): Promise<Client> {
  loading ??= import("ssh2").then((ssh2) => ssh2.Client);
  const SshClient = await loading;
  return new SshClient();
}
