import { join } from "node:path";

/** Where the three services put their sockets when none is named: systemd's RuntimeDirectory. */
export const DEFAULT_RUNTIME_DIR = "/run/banger";
/** Where durable state lives when none is named: systemd's StateDirectory. */
export const DEFAULT_STATE_DIR = "/var/lib/banger";

/**
 * The alias on every link banger makes (`banger:bridge`, `banger:tap:<vm_id>`,
 * `banger:pool`): how the helper, and `banger system uninstall`, know banger's links.
 */
export const LINK_ALIAS_PREFIX = "banger:";
/** banger's nftables table (`ip banger`): the VMs' masquerade rules. */
export const NFT_TABLE = "banger";

/** Every path derived from banger's runtime directory; nobody joins these by hand. */
export interface RuntimeLayout {
  readonly runtimeDir: string;
  readonly orchestratorSocket: string;
  readonly privilegedSocket: string;
  readonly pullerSocket: string;
}

export function runtimeLayout(runtimeDir: string): RuntimeLayout {
  return {
    runtimeDir,
    orchestratorSocket: join(runtimeDir, "orchestrator.sock"),
    privilegedSocket: join(runtimeDir, "privileged.sock"),
    pullerSocket: join(runtimeDir, "image-puller.sock"),
  };
}

/** Every path derived from banger's state directory. */
export interface StateLayout {
  readonly stateDir: string;
  readonly logDir: string;
  logFile(service: string): string;
}

export function stateLayout(stateDir: string): StateLayout {
  const logDir = join(stateDir, "logs");
  return { stateDir, logDir, logFile: (service) => join(logDir, `${service}.jsonl`) };
}
