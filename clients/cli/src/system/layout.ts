/**
 * Where an installed banger lives. Every path is derived here, once: as the
 * running system sees it (`/etc/banger/install.json`), and as a file under the
 * install root (`<root>/etc/banger/install.json`; the root is `/` unless
 * `--root DIR` renders into a directory tree).
 */
import { join } from "node:path";
import {
  DEFAULT_RUNTIME_DIR,
  DEFAULT_STATE_DIR,
  runtimeLayout,
  stateLayout,
  type RuntimeLayout,
} from "@banger/common/layout";

/** The group whose members may connect to the helper's socket (bangerd runs with it as its group). */
export const BANGER_GROUP = "banger";
/** The image puller's own unprivileged user (and group). */
export const PULLER_USER = "banger-puller";

export type ServiceName = "orchestrator" | "privileged" | "image-puller";

/** Each service's units, in dependency order (the helper and the puller before bangerd). */
export const SERVICE_UNITS: readonly {
  readonly service: ServiceName;
  readonly unit: string;
  readonly socket: string;
}[] = [
  { service: "privileged", unit: "banger-privileged.service", socket: "banger-privileged.socket" },
  { service: "image-puller", unit: "banger-image-puller.service", socket: "banger-image-puller.socket" },
  { service: "orchestrator", unit: "bangerd.service", socket: "bangerd.socket" },
];

/** Every unit file banger installs: three sockets, three services. */
export const UNIT_FILES: readonly string[] = [
  ...SERVICE_UNITS.flatMap((s) => [s.socket, s.unit]),
  // bangerd's second socket unit: `.vm` DNS on the bridge's port 53, bound by systemd as root.
  "bangerd-dns.socket",
];

/** Units `install` enables: the three sockets, and bangerd itself so it starts at boot. */
export const ENABLED_UNITS: readonly string[] = [
  ...SERVICE_UNITS.map((s) => s.socket),
  "bangerd-dns.socket",
  "bangerd.service",
];

/** Paths as the installed system sees them. */
export interface SystemPaths {
  readonly runtime: RuntimeLayout;
  readonly stateDir: string;
  /** Where bangerd names each pull's staging directory; bind-mounted into the puller. */
  readonly stagingDir: string;
  /** The puller's CacheDirectory. */
  readonly cacheDir: string;
  /** The puller's built-image cache (bind-mounted at `<stateDir>/cache/built` for it). */
  readonly builtCacheDir: string;
  /** The helper's RootDirectory: empty, root's; its unit binds in what it may see. */
  readonly helperRoot: string;
  readonly unitDir: string;
  readonly metadataDir: string;
  readonly metadataFile: string;
  readonly sysctlFile: string;
  readonly sysusersFile: string;
}

export const SYSTEM_PATHS: SystemPaths = {
  runtime: runtimeLayout(DEFAULT_RUNTIME_DIR),
  stateDir: DEFAULT_STATE_DIR,
  stagingDir: stateLayout(DEFAULT_STATE_DIR).imageStagingDir,
  cacheDir: "/var/cache/banger-image-puller",
  builtCacheDir: "/var/cache/banger-image-puller/built",
  helperRoot: "/var/lib/banger-helper-root",
  unitDir: "/etc/systemd/system",
  metadataDir: "/etc/banger",
  metadataFile: "/etc/banger/install.json",
  sysctlFile: "/etc/sysctl.d/60-banger.conf",
  sysusersFile: "/etc/sysusers.d/banger.conf",
};

/** The install root: `/` for the running system, or the directory of `--root`. */
export interface InstallRoot {
  readonly root: string;
  /** Whether this is the running system (`/`), where systemctl, sysctl and the live accounts apply. */
  readonly live: boolean;
  /** A system path as a file under the root. */
  file(systemPath: string): string;
  unitFile(unit: string): string;
}

export function installRoot(root: string | undefined): InstallRoot {
  const base = root ?? "/";
  return {
    root: base,
    live: root === undefined,
    file: (systemPath) => (root === undefined ? systemPath : join(base, systemPath)),
    unitFile: (unit) => join(root ?? "/", SYSTEM_PATHS.unitDir, unit),
  };
}
