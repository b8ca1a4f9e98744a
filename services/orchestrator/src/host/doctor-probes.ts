/**
 * The real read-only host probes `banger doctor` uses (core/doctor.ts takes
 * them as a port). Each looks; none changes anything: /dev/kvm is opened and
 * closed, the VMM only asked for `--version`, the SSH key read, never made.
 */
import { constants } from "node:fs";
import { access, open, readFile, statfs } from "node:fs/promises";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import {
  ANY_EXIT_CODE,
  DNS_FD_NAME,
  FailedPreconditionError,
  activatedFds,
  effectiveCapabilities,
  runProcess,
} from "@banger/common";
import { readSshIdentity, sshIdentityPaths } from "../config/index.js";
import type { DoctorProbes, SshKeyState } from "../core/ports.js";
import { CommonReason } from "@banger/common/reasons";
import { OrchestratorReason } from "../reasons.js";

/** Where bangerd's tools are looked up (the PATH its runners use: the owner's may lack sbin). */
const TOOL_DIRS = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
const KVM = "/dev/kvm";
const DNS_PORT = 53;

export function createDoctorProbes(options: {
  /** banger's config dir (banger's own SSH key lives in `ssh/` there). */
  readonly configDir: string;
  /** ssh.private_key from the config; null = banger's own key. */
  readonly configuredKeyPath: string | null;
}): DoctorProbes {
  return {
    async kvmAccess() {
      try {
        const handle = await open(KVM, constants.O_RDWR);
        await handle.close();
        return { ok: true };
      } catch (error) {
        return { ok: false, code: (error as NodeJS.ErrnoException).code ?? "UNKNOWN" };
      }
    },

    async version(binary, signal) {
      const env = { PATH: TOOL_DIRS.join(":"), LC_ALL: "C" };
      try {
        const { code, stdout, stderr } = await runProcess([binary, "--version"], {
          signal,
          env,
          okCodes: ANY_EXIT_CODE,
          maxOutputBytes: 64 * 1024,
        });
        if (code === 0) return { kind: "output", text: `${stdout.toString()}${stderr}` };
        const said = stderr.trim().split("\n").pop() ?? "";
        return { kind: "failed", message: said || `${binary} --version exited ${code}` };
      } catch (error) {
        if (error instanceof FailedPreconditionError && error.reason === CommonReason.HOST_TOOL_MISSING)
          return { kind: "missing" };
        if ((error as NodeJS.ErrnoException).code === "EACCES") return { kind: "not-executable" };
        return { kind: "failed", message: (error as Error).message };
      }
    },

    async findTool(tool) {
      for (const dir of TOOL_DIRS) {
        const path = join(dir, tool);
        if (
          await access(path, constants.X_OK).then(
            () => true,
            () => false,
          )
        ) {
          return path;
        }
      }
      return undefined;
    },

    async ipForwarding() {
      return (await readFile("/proc/sys/net/ipv4/ip_forward", "utf8")).trim() === "1";
    },

    async lowPorts() {
      if (activatedFds(DNS_FD_NAME).length >= 2) {
        return { ok: true, why: "gets its port 53 sockets bound as root (bangerd-dns.socket, or dev up)" };
      }
      if (process.getuid?.() === 0) return { ok: true, why: "runs as root" };
      if (effectiveCapabilities().includes("CAP_NET_BIND_SERVICE")) {
        return { ok: true, why: "holds CAP_NET_BIND_SERVICE" };
      }
      const start = Number(
        (await readFile("/proc/sys/net/ipv4/ip_unprivileged_port_start", "utf8").catch(() => "1024")).trim(),
      );
      if (start <= DNS_PORT) return { ok: true, why: `net.ipv4.ip_unprivileged_port_start is ${start}` };
      return {
        ok: false,
        why: `uid ${process.getuid?.() ?? "?"} without CAP_NET_BIND_SERVICE (net.ipv4.ip_unprivileged_port_start is ${start})`,
      };
    },

    addresses() {
      return Promise.resolve(
        Object.entries(networkInterfaces()).flatMap(([name, addresses]) =>
          (addresses ?? [])
            .filter((a) => a.family === "IPv4" && a.cidr !== null)
            .map((a) => ({ interface: name, cidr: a.cidr ?? "" })),
        ),
      );
    },

    async freeSpace(dir) {
      const fs = await statfs(dir);
      return { freeBytes: fs.bavail * fs.bsize, totalBytes: fs.blocks * fs.bsize };
    },

    async sshKey(): Promise<SshKeyState> {
      const managed = options.configuredKeyPath === null;
      const path = options.configuredKeyPath ?? sshIdentityPaths(options.configDir).privateKey;
      try {
        const identity = await readSshIdentity(options);
        return { kind: "ok", path, managed, fingerprint: identity.fingerprint };
      } catch (error) {
        if (!(error instanceof FailedPreconditionError)) throw error;
        if (error.reason === OrchestratorReason.SSH_KEY_NOT_FOUND) return { kind: "missing", path, managed };
        return { kind: "unusable", path, managed, message: error.message };
      }
    },
  };
}
