/**
 * The lifecycle's view of guests (core/vms.ts GuestPort), built from the
 * disk builders here, the owner's SSH identity and config, and a TCP probe
 * of the guest's SSH port.
 */
import { connect } from "node:net";
import { DeadlineExceededError, runProcess } from "@banger/common";
import type { BangerConfig, SshIdentity } from "../config/index.js";
import type { GuestPort } from "../core/ports.js";
import { createCleanImageCheck } from "./clean-image.js";
import { bootArgsIp, rootDiskFiles, workDiskFiles } from "./guest-files.js";
import { growWorkDisk, prepareWorkDisk, refreshWorkDisk } from "./work-disk.js";

export function createGuestPort(deps: {
  readonly config: BangerConfig;
  /** The owner's home: file_sync sources must be inside it. */
  readonly home: string;
  /** The guests' key pair, made on first use. */
  readonly sshIdentity: () => Promise<SshIdentity>;
}): GuestPort {
  const cleanRootfs = createCleanImageCheck();
  /** What banger writes onto a work disk, from the config and the owner's files as they are now. */
  const bangerFiles = async () => {
    const [identity, gitIdentity] = await Promise.all([deps.sshIdentity(), readGitIdentity(deps.home)]);
    return workDiskFiles({
      publicKey: identity.publicKey,
      ...(gitIdentity ? { gitIdentity } : {}),
      fileSync: deps.config.fileSync,
      home: deps.home,
    });
  };
  return {
    rootDiskFiles: (vm, network) =>
      rootDiskFiles({
        hostname: vm.name,
        guestIp: vm.guestIp,
        prefixLength: network.prefixLength,
        gateway: network.address,
        nameserver: network.address,
        domain: "vm",
      }),
    bootArgsIp: (vm, network) =>
      bootArgsIp({
        hostname: vm.name,
        guestIp: vm.guestIp,
        prefixLength: network.prefixLength,
        gateway: network.address,
      }),
    async prepareWorkDisk({ target, seedPath, sizeMib, signal }) {
      // Gathered (the key, git's identity, file_sync's sources) while the disk is made.
      await prepareWorkDisk({ target, seedPath, sizeMib, files: bangerFiles(), signal });
    },
    growWorkDisk: (path, sizeMib, signal) => growWorkDisk(path, sizeMib, signal),
    refreshWorkDisk: (path, signal) => refreshWorkDisk({ path, files: bangerFiles(), signal }),
    cleanRootfs,
    waitForSsh: (ip, timeoutMs, signal) => waitForSshBanner(ip, timeoutMs, signal),
  };
}

/**
 * The owner's git identity (`git config --global user.name` and `user.email`,
 * read with HOME set to the owner's home, both in one git run), so commits in
 * the guest carry it; undefined when either is unset or git is not installed.
 */
export async function readGitIdentity(home: string): Promise<{ name: string; email: string } | undefined> {
  let stdout: Buffer;
  try {
    // -z: each entry is the key, a newline, the value and a NUL (a value may hold newlines).
    ({ stdout } = await runProcess(["git", "config", "--global", "-z", "--get-regexp", "^user\\.(name|email)$"], {
      env: { ...process.env, HOME: home, XDG_CONFIG_HOME: "", GIT_CONFIG_NOSYSTEM: "1" },
      signal: AbortSignal.timeout(5_000),
    }));
  } catch {
    return undefined; // exit 1: neither is set; or no git
  }
  const values = new Map<string, string>();
  for (const entry of stdout.toString().split("\0")) {
    const newline = entry.indexOf("\n");
    // As `--get` does, the last value of a key set more than once.
    if (newline > 0) values.set(entry.slice(0, newline), entry.slice(newline + 1));
  }
  const name = values.get("user.name")?.trim() ?? "";
  const email = values.get("user.email")?.trim() ?? "";
  return name !== "" && email !== "" ? { name, email } : undefined;
}

/**
 * Resolves once `ip:22` answers with an SSH banner; retries every SSH_POLL_MS (a refused connection costs a
 * guest nothing but a reset) until `timeoutMs` (may be infinite: then until `signal` aborts).
 */
export async function waitForSshBanner(ip: string, timeoutMs: number, signal: AbortSignal): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await bannerOnce(ip, Math.min(2_000, Math.max(1, deadline - Date.now())))) return;
    if (signal.aborted) throw signal.reason;
    if (Date.now() >= deadline) {
      throw new DeadlineExceededError(`the guest's SSH at ${ip}:22 did not answer within ${timeoutMs} ms`, {
        reason: "SSH_TIMEOUT",
      });
    }
    await new Promise((resolve) => setTimeout(resolve, SSH_POLL_MS));
  }
}

const SSH_POLL_MS = 50;

/**
 * How long a connection may take to be accepted before a new one is tried: a SYN sent while the host's
 * neighbour entry still names the MAC of a VM that had this address before is lost, and TCP would resend
 * it only after a second; a new connection goes out once the guest's announcement has updated the entry.
 */
const CONNECT_MS = 250;

function bannerOnce(ip: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: ip, port: 22 });
    let seen = "";
    const done = (ok: boolean) => {
      clearTimeout(unanswered);
      socket.destroy();
      resolve(ok);
    };
    const unanswered = setTimeout(() => done(false), Math.min(CONNECT_MS, timeoutMs));
    socket.once("connect", () => clearTimeout(unanswered));
    socket.setTimeout(timeoutMs, () => done(false));
    socket.on("data", (chunk: Buffer) => {
      seen += chunk.toString("latin1");
      if (seen.startsWith("SSH-")) done(true);
      else if (seen.length >= 4) done(false);
    });
    socket.on("error", () => done(false));
    socket.on("close", () => done(seen.startsWith("SSH-")));
  });
}
