/**
 * For tests only (`@banger/common/testing`): what a suite needs from the host,
 * checked once where the suite is declared. A suite that lacks a host tool is
 * skipped, never failed, with one line naming what is missing and the command
 * that installs it (scripts/host-packages.txt lists the packages):
 *
 *   SKIPPING privileged network operations: this machine lacks nft (nftables); run npm run setup
 *
 * Other reasons to skip (not root, uid 1000 cannot read the checkout) stay
 * with the suites that have them.
 */
import { accessSync, constants, statSync } from "node:fs";
import { join } from "node:path";
import { HOST_PATH } from "@banger/common/host-runner";

/** The command that installs every host package the tests need. */
export const SETUP_COMMAND = "npm run setup";

/** The Debian package behind each host tool a test or a service runs. */
const PACKAGE_OF: Record<string, string> = {
  nft: "nftables",
  ip: "iproute2",
  "mkfs.ext4": "e2fsprogs",
  e2fsck: "e2fsprogs",
  debugfs: "e2fsprogs",
  resize2fs: "e2fsprogs",
  dumpe2fs: "e2fsprogs",
  e2cp: "e2tools",
  losetup: "mount",
  blockdev: "mount",
  setpriv: "util-linux",
  ps: "procps",
  pgrep: "procps",
  pkill: "procps",
  kill: "procps",
  zstd: "zstd",
  xz: "xz-utils",
  cpio: "cpio",
  tar: "tar",
  git: "git",
  python3: "python3",
  openssl: "openssl",
  "docker-registry": "docker-registry",
  skopeo: "skopeo",
  tmux: "tmux",
  ssh: "openssh-client",
  "ssh-keygen": "openssh-client",
  "ssh-keyscan": "openssh-client",
  sshd: "openssh-server",
  dig: "dnsutils",
  systemctl: "systemd",
  "systemd-analyze": "systemd",
  "systemd-sysusers": "systemd",
  "systemd-socket-activate": "systemd",
  "systemd-nspawn": "systemd-container",
  "qemu-system-x86_64": "qemu-system-x86",
  busybox: "busybox-static",
  dropbear: "dropbear-bin",
  dropbearkey: "dropbear-bin",
  "qemu-ga": "qemu-guest-agent",
  patchelf: "patchelf",
  mmdebstrap: "mmdebstrap",
  dash: "dash",
  zsh: "zsh",
  fish: "fish",
};

/** e2fsprogs' tools, which banger runs on every ext4 image and disk. */
export const EXT4_TOOLS = ["mkfs.ext4", "e2fsck", "debugfs", "resize2fs", "dumpe2fs"];

/**
 * What a suite needs: a host tool by name (looked up where the services look,
 * {@link HOST_PATH}) or by absolute path, or anything else as `what` (named
 * with its package) and whether this machine has it.
 */
export type Need = string | { readonly what: string; readonly present: boolean };

/** Whether this machine has a host tool (a name on {@link HOST_PATH}, or an absolute path). */
export function hasTool(tool: string): boolean {
  const candidates = tool.startsWith("/") ? [tool] : HOST_PATH.split(":").map((dir) => join(dir, tool));
  return candidates.some((path) => {
    try {
      accessSync(path, constants.X_OK);
      return statSync(path).isFile();
    } catch {
      return false;
    }
  });
}

/** The package that brings a tool. */
function packageOf(tool: string): string {
  const name = tool.slice(tool.lastIndexOf("/") + 1);
  const pkg = PACKAGE_OF[name];
  if (pkg === undefined) throw new Error(`requireTools: which package brings ${name}? Add it to PACKAGE_OF`);
  return pkg;
}

/** Missing tools as the skip line names them, by package: `ip (iproute2), mkfs.ext4, e2fsck (e2fsprogs)`. */
function describeTools(tools: readonly string[]): string[] {
  const byPackage = new Map<string, string[]>();
  for (const tool of tools) byPackage.set(packageOf(tool), [...(byPackage.get(packageOf(tool)) ?? []), tool]);
  return [...byPackage].map(([pkg, names]) => `${names.join(", ")} (${pkg})`);
}

/**
 * What of `needs` this machine lacks (empty when nothing); when something,
 * prints the one line that says the suite is skipped, what it lacks and how
 * to get it. Use as `describe.skipIf(requireTools("…", ["nft", "ip"]).length > 0)`.
 */
export function requireTools(suite: string, needs: readonly Need[]): string[] {
  const tools = needs.filter((need) => typeof need === "string");
  tools.forEach(packageOf); // a tool without a known package is a mistake even where it is present
  const missing = [
    ...describeTools(tools.filter((tool) => !hasTool(tool))),
    ...needs.flatMap((need) => (typeof need === "string" || need.present ? [] : [need.what])),
  ];
  if (missing.length > 0) {
    console.warn(`SKIPPING ${suite}: this machine lacks ${missing.join(", ")}; run ${SETUP_COMMAND}`);
  }
  return missing;
}
