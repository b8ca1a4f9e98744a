/**
 * The lifecycle's view of guests (core/vms.ts GuestPort), built from the
 * disk builders here, the owner's SSH identity and config, and a TCP probe
 * of the guest's SSH port.
 */
import { connect } from "node:net";
import { DeadlineExceededError, runProcess } from "@banger/common";
import type { BangerConfig, SshIdentity } from "../config/index.js";
import type { GuestPort } from "../core/ports.js";
import { bootArgsIp, rootDiskFiles, workDiskFiles } from "./guest-files.js";
import { growWorkDisk, prepareWorkDisk } from "./work-disk.js";

export function createGuestPort(deps: {
  readonly config: BangerConfig;
  /** The owner's home: file_sync sources must be inside it. */
  readonly home: string;
  /** The guests' key pair, made on first use. */
  readonly sshIdentity: () => Promise<SshIdentity>;
}): GuestPort {
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
      const identity = await deps.sshIdentity();
      const gitIdentity = await readGitIdentity(deps.home);
      const files = await workDiskFiles({
        publicKey: identity.publicKey,
        ...(gitIdentity ? { gitIdentity } : {}),
        fileSync: deps.config.fileSync,
        home: deps.home,
      });
      await prepareWorkDisk({ target, seedPath, sizeMib, files, signal });
    },
    growWorkDisk: (path, sizeMib, signal) => growWorkDisk(path, sizeMib, signal),
    waitForSsh: (ip, timeoutMs, signal) => waitForSshBanner(ip, timeoutMs, signal),
  };
}

/**
 * The owner's git identity (`git config --global user.name` and `user.email`,
 * read with HOME set to the owner's home), so commits in the guest carry it;
 * undefined when either is unset or git is not installed.
 */
export async function readGitIdentity(home: string): Promise<{ name: string; email: string } | undefined> {
  const get = async (key: string) => {
    try {
      const { stdout } = await runProcess(["git", "config", "--global", "--get", key], {
        env: { ...process.env, HOME: home, XDG_CONFIG_HOME: "", GIT_CONFIG_NOSYSTEM: "1" },
        signal: AbortSignal.timeout(5_000),
      });
      return stdout.toString().trim();
    } catch {
      return "";
    }
  };
  const [name, email] = [await get("user.name"), await get("user.email")];
  return name !== "" && email !== "" ? { name, email } : undefined;
}

/** Resolves once `ip:22` answers with an SSH banner; retries until `timeoutMs`. */
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
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

function bannerOnce(ip: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: ip, port: 22 });
    let seen = "";
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
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
