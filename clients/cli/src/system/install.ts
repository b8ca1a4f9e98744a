/**
 * `banger system install|uninstall|restart`: every check comes first and
 * refuses with nothing changed (not root, no systemd as PID 1, no such owner,
 * code not built, installed for someone else); then the steps run in an order
 * that a second run repeats harmlessly (an install over an install upgrades it).
 */
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { BANGER_VERSION } from "@banger/common/version";
import { bridgeAddressOf } from "../bridge-address.js";
import { waitForHealth, allAnswer, type LiveStatus } from "./health.js";
import { removeHostNetwork } from "./host-network.js";
import { groupIdFromFile, lookupGroupId, lookupUser, userFromFile, type SystemHost, type UserEntry } from "./host.js";
import {
  BANGER_GROUP,
  ENABLED_UNITS,
  PULLER_USER,
  SERVICE_UNITS,
  SYSTEM_PATHS,
  UNIT_FILES,
  installRoot,
  type InstallRoot,
} from "./layout.js";
import { METADATA_FORMAT, metadataJson, readMetadata, type InstallMetadata } from "./metadata.js";
import { UnitValueError, renderUnits, templateDir } from "./render.js";

/** A check failed before anything was changed. */
export class RefusedError extends Error {
  override readonly name = "RefusedError";
}

export interface SystemContext {
  readonly host: SystemHost;
  /** The code this CLI belongs to: the units run `<codeDir>/services/*\/dist/bundle/main.js`. */
  readonly codeDir: string;
  /** The node binary running this CLI; the units run the services with it. */
  readonly node: string;
  readonly env: NodeJS.ProcessEnv;
  /** Progress lines for the user. */
  readonly say: (line: string) => void;
  /** How long to wait for the three services to answer after a start. */
  readonly healthTimeoutMs: number;
}

export interface InstallOptions {
  readonly root?: string;
  readonly owner?: string;
  readonly firecracker: string;
  /**
   * Where bangerd-dns.socket binds port 53 for bangerd: the bridge's address. Default: the address of
   * network.address in the owner's config.toml, else 172.30.0.1 (bangerd's default bridge).
   */
  readonly dnsAddress?: string;
}

/** The bridge's address from the owner's config (what bangerd will put on the bridge), and where it came from. */
function dnsAddressOf(root: InstallRoot, owner: UserEntry): { address: string; from: string } {
  const file = join(owner.home, ".config", "banger", "config.toml");
  let text: string | undefined;
  try {
    text = readFileSync(root.file(file), "utf8");
  } catch {
    text = undefined;
  }
  try {
    return bridgeAddressOf(text, file);
  } catch (error) {
    throw new RefusedError(`${(error as Error).message}; fix it or pass --dns-address; nothing was changed`);
  }
}

const SYSCTL_TEXT =
  "# Written by `banger system install`: guests reach the outside through NAT on the host.\nnet.ipv4.ip_forward = 1\n";
const SYSUSERS_TEXT =
  "# Written by `banger system install`: the group that may reach the privileged helper's socket,\n" +
  "# and the image puller's own unprivileged user.\n" +
  `g ${BANGER_GROUP} - -\n` +
  `u ${PULLER_USER} - "banger image puller" /nonexistent /usr/sbin/nologin\n`;

// ------------------------------------------------------------------ checks

function requireRoot(ctx: SystemContext, command: string): void {
  if (ctx.host.euid() !== 0) {
    throw new RefusedError(
      `banger system ${command} must run as root (sudo banger system ${command}); nothing was changed`,
    );
  }
}

/** Refuses on a machine whose PID 1 is not systemd, unless the command renders into a directory. */
export function requireSystemd(ctx: SystemContext, command: string, withRootOption: boolean): void {
  const { running, pid1 } = ctx.host.systemd();
  if (running) return;
  const alternative = withRootOption ? " To render the units and files into a directory instead, use --root DIR." : "";
  throw new RefusedError(
    `systemd is not PID 1 on this machine (PID 1 is ${pid1}), so banger cannot run as system services here; ` +
      `nothing was changed. Run banger from a checkout with \`banger dev up\`.${alternative}`,
  );
}

function checkRootOption(root: string | undefined): InstallRoot {
  if (root === "/") throw new RefusedError("--root / is the running system: leave out --root");
  return installRoot(root);
}

function resolveOwner(ctx: SystemContext, spec: string | undefined): UserEntry {
  const wanted = spec ?? ctx.env["SUDO_USER"] ?? ctx.env["SUDO_UID"];
  if (!wanted) {
    throw new RefusedError(
      "name the owner, the user whose banger this is: --owner USER (or run it through sudo as that user)",
    );
  }
  const owner = lookupUser(ctx.host, wanted);
  if (!owner) throw new RefusedError(`no user ${wanted} on this machine`);
  if (owner.uid === 0) {
    throw new RefusedError(
      "the owner must not be root: bangerd runs as the owner, and the helper answers only the owner",
    );
  }
  return owner;
}

/** The built entry points and the templates must be there before anything is written. */
function checkCode(ctx: SystemContext): void {
  for (const service of ["orchestrator", "privileged", "image-puller"]) {
    const entry = join(ctx.codeDir, "services", service, "dist", "bundle", "main.js");
    if (!existsSync(entry)) throw new RefusedError(`${entry} is missing: build banger first (npm run build)`);
  }
  for (const unit of UNIT_FILES) {
    const template = join(templateDir(ctx.codeDir), `${unit}.in`);
    if (!existsSync(template))
      throw new RefusedError(`${template} is missing: ${ctx.codeDir} is not a complete banger`);
  }
}

/** Temporary trees: every unit has PrivateTmp=yes (its own empty /tmp), and systemd-tmpfiles ages them out. */
const TEMPORARY_TREES = ["/tmp", "/var/tmp"];

/**
 * Code (or node) under /tmp would be an empty directory to the units. A live install refuses;
 * `--root` (packaging, tests) says so and goes on, as the tree may be installed elsewhere.
 */
function checkNotInTmp(ctx: SystemContext, root: InstallRoot): void {
  for (const [what, path] of [
    ["the code", ctx.codeDir],
    ["node", ctx.node],
  ] as const) {
    const tree = TEMPORARY_TREES.find((t) => path === t || path.startsWith(`${t}/`));
    if (tree === undefined) continue;
    const why =
      `${what} is in ${tree} (${path}), which every unit replaces with its own empty ${tree} (PrivateTmp=) ` +
      `and systemd-tmpfiles cleans: move it (e.g. to /opt/banger)`;
    if (root.live) throw new RefusedError(`${why}; nothing was changed`);
    ctx.say(`warning: ${why} before these units run`);
  }
}

/**
 * The helper (root without CAP_DAC_OVERRIDE) and the puller (its own user)
 * read the code through "other" permissions: every directory on the way must
 * be o+x and the files o+r. Directories systemd binds in (under /home, /root)
 * are reached through the unit's own mount points and are not checked.
 */
function checkReadable(ctx: SystemContext): void {
  const files = [
    ctx.node,
    join(ctx.codeDir, "services", "privileged", "dist", "bundle", "main.js"),
    join(ctx.codeDir, "services", "image-puller", "dist", "bundle", "main.js"),
    join(ctx.codeDir, "node_modules", "koffi", "package.json"),
  ];
  for (const file of files) {
    const bindRoot = [ctx.codeDir, ctx.node].find(
      (p) => file.startsWith(p) && /^\/(home|root|run\/user)(\/|$)/.test(p),
    );
    let dir = dirname(file);
    const dirs: string[] = [];
    while (dir !== "/" && dir !== (bindRoot ? dirname(bindRoot) : "")) {
      dirs.push(dir);
      dir = dirname(dir);
    }
    for (const d of dirs) {
      if ((statSync(d).mode & 0o001) === 0) {
        throw new RefusedError(
          `${d} is not searchable by other users, so the helper and the puller cannot read ${file}: ` +
            `chmod o+x ${d}, or put banger somewhere readable such as /opt/banger; nothing was changed`,
        );
      }
    }
    if ((statSync(file).mode & 0o004) === 0) {
      throw new RefusedError(`${file} is not readable by other users (chmod o+r); nothing was changed`);
    }
  }
}

function checkTools(ctx: SystemContext, root: InstallRoot): void {
  for (const tool of ["systemctl", "systemd-sysusers", ...(root.live ? ["sysctl"] : [])]) {
    if (ctx.host.run([tool, "--version"]).code === 127) {
      throw new RefusedError(`${tool} is not installed (Debian package systemd); nothing was changed`);
    }
  }
}

// ------------------------------------------------------------------ file steps

function writeFileAtomic(path: string, text: string, mode: number): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  const temp = `${path}.banger-new`;
  writeFileSync(temp, text, { mode });
  chmodSync(temp, mode);
  renameSync(temp, path);
}

/** Makes a directory (parents root-owned 0755) and gives it exactly this owner and mode. */
function ensureDir(path: string, uid: number, gid: number, mode: number): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  if (!existsSync(path)) mkdirSync(path, { mode: 0o700 });
  chownSync(path, uid, gid);
  chmodSync(path, mode);
}

/**
 * Makes `<home>/<below…>` for the owner (0700) where absent; directories
 * that exist keep their owner and mode, and the parents of the home are root's.
 */
function ensureOwnerDirs(home: string, below: readonly string[], owner: UserEntry): void {
  mkdirSync(dirname(home), { recursive: true, mode: 0o755 });
  let path = home;
  for (const name of ["", ...below]) {
    path = name === "" ? home : join(path, name);
    if (existsSync(path)) continue;
    mkdirSync(path, { mode: 0o700 });
    chownSync(path, owner.uid, owner.gid);
  }
}

function accountIds(ctx: SystemContext, root: InstallRoot): InstallMetadata["accounts"] {
  const gid = root.live
    ? lookupGroupId(ctx.host, BANGER_GROUP)
    : groupIdFromFile(root.file("/etc/group"), BANGER_GROUP);
  const puller = root.live ? lookupUser(ctx.host, PULLER_USER) : userFromFile(root.file("/etc/passwd"), PULLER_USER);
  if (gid === undefined || !puller) {
    throw new Error(`systemd-sysusers did not create group ${BANGER_GROUP} and user ${PULLER_USER}`);
  }
  return { group: BANGER_GROUP, gid, pullerUser: PULLER_USER, pullerUid: puller.uid, pullerGid: puller.gid };
}

// ------------------------------------------------------------------ install

export async function install(ctx: SystemContext, options: InstallOptions): Promise<LiveStatus | undefined> {
  // Checks: any failure here leaves the machine as it was.
  requireRoot(ctx, "install");
  const root = checkRootOption(options.root);
  if (root.live) requireSystemd(ctx, "install", true);
  const owner = resolveOwner(ctx, options.owner);
  checkCode(ctx);
  checkNotInTmp(ctx, root);
  checkTools(ctx, root);
  const previous = readMetadata(root.file(SYSTEM_PATHS.metadataFile));
  if (previous && previous.owner.uid !== owner.uid) {
    throw new RefusedError(
      `banger is installed for ${previous.owner.user} (uid ${previous.owner.uid}); ` +
        `uninstall it first (sudo banger system uninstall); nothing was changed`,
    );
  }
  checkReadable(ctx);
  const dns = options.dnsAddress ? { address: options.dnsAddress, from: "--dns-address" } : dnsAddressOf(root, owner);
  let units: Map<string, string>;
  try {
    units = renderUnits({
      version: BANGER_VERSION,
      codeDir: ctx.codeDir,
      node: ctx.node,
      owner: { user: owner.name, uid: owner.uid, gid: owner.gid, home: owner.home },
      firecracker: options.firecracker,
      dnsAddress: dns.address,
    });
  } catch (error) {
    if (error instanceof UnitValueError) throw new RefusedError(`${error.message}; nothing was changed`);
    throw error;
  }
  const where = root.live ? "" : ` under ${root.root}`;
  ctx.say(
    `${previous ? "upgrading" : "installing"} banger ${BANGER_VERSION} for ${owner.name} (uid ${owner.uid}) from ${ctx.codeDir}${where}`,
  );

  // Accounts: declared in sysusers.d, created by systemd-sysusers (inside the root for --root).
  writeFileAtomic(root.file(SYSTEM_PATHS.sysusersFile), SYSUSERS_TEXT, 0o644);
  ctx.host.mustRun([
    "systemd-sysusers",
    ...(root.live ? [] : [`--root=${root.root}`]),
    root.file(SYSTEM_PATHS.sysusersFile),
  ]);
  const accounts = accountIds(ctx, root);
  ctx.say(
    `accounts: group ${accounts.group} (gid ${accounts.gid}), user ${accounts.pullerUser} (uid ${accounts.pullerUid})`,
  );

  // Layout. The state directory is bangerd's (its StateDirectory=, made the same way, so
  // systemd finds it right and never re-chowns it); the staging directory is shared with
  // the puller through its group; the cache is the puller's own.
  ensureDir(root.file(SYSTEM_PATHS.stateDir), owner.uid, accounts.gid, 0o750);
  ensureDir(root.file(dirname(SYSTEM_PATHS.stagingDir)), owner.uid, accounts.gid, 0o750);
  ensureDir(root.file(SYSTEM_PATHS.stagingDir), owner.uid, accounts.pullerGid, 0o2770);
  ensureDir(root.file(SYSTEM_PATHS.cacheDir), accounts.pullerUid, accounts.pullerGid, 0o700);
  ensureDir(root.file(SYSTEM_PATHS.builtCacheDir), accounts.pullerUid, accounts.pullerGid, 0o700);
  // The helper's RootDirectory: root's and empty; systemd makes the mount points of what its unit binds in.
  ensureDir(root.file(SYSTEM_PATHS.helperRoot), 0, 0, 0o755);
  // bangerd's unit binds ~/.config/banger writable: it must exist.
  ensureOwnerDirs(root.file(owner.home), [".config", "banger"], owner);
  ctx.say(
    `state: ${SYSTEM_PATHS.stateDir} (${owner.name}:${BANGER_GROUP} 0750), cache: ${SYSTEM_PATHS.cacheDir} (${PULLER_USER} 0700)`,
  );

  for (const [unit, text] of units) writeFileAtomic(root.unitFile(unit), text, 0o644);
  ctx.say(`units: ${UNIT_FILES.map((u) => join(SYSTEM_PATHS.unitDir, u)).join(" ")}`);
  ctx.say(`.vm DNS: port 53 on ${dns.address} (${dns.from})`);
  writeFileAtomic(root.file(SYSTEM_PATHS.sysctlFile), SYSCTL_TEXT, 0o644);

  const metadata: InstallMetadata = {
    format: METADATA_FORMAT,
    version: BANGER_VERSION,
    installedAt: new Date().toISOString(),
    owner: { user: owner.name, uid: owner.uid, gid: owner.gid, home: owner.home },
    accounts,
    code: { dir: ctx.codeDir, node: ctx.node },
    firecracker: options.firecracker,
    paths: {
      runtimeDir: SYSTEM_PATHS.runtime.runtimeDir,
      stateDir: SYSTEM_PATHS.stateDir,
      cacheDir: SYSTEM_PATHS.cacheDir,
      sockets: {
        orchestrator: SYSTEM_PATHS.runtime.orchestratorSocket,
        privileged: SYSTEM_PATHS.runtime.privilegedSocket,
        imagePuller: SYSTEM_PATHS.runtime.pullerSocket,
      },
    },
    units: [...UNIT_FILES],
    files: [SYSTEM_PATHS.sysctlFile, SYSTEM_PATHS.sysusersFile, SYSTEM_PATHS.metadataFile],
  };
  writeFileAtomic(root.file(SYSTEM_PATHS.metadataFile), metadataJson(metadata), 0o644);
  ctx.say(`metadata: ${SYSTEM_PATHS.metadataFile}`);

  if (!root.live) {
    ctx.host.mustRun(["systemctl", `--root=${root.root}`, "enable", ...ENABLED_UNITS]);
    ctx.say(`enabled ${ENABLED_UNITS.join(" ")} under ${root.root}; nothing was started (--root)`);
    return undefined;
  }

  ctx.host.mustRun(["sysctl", "-p", SYSTEM_PATHS.sysctlFile]);
  ctx.host.mustRun(["systemctl", "daemon-reload"]);
  ctx.host.mustRun(["systemctl", "enable", ...ENABLED_UNITS]);
  // An upgrade: stop the services so the new code and units take effect (VMs keep
  // running: the helper's KillMode=process), re-create the sockets, start bangerd.
  ctx.host.run(["systemctl", "stop", ...[...SERVICE_UNITS].reverse().map((s) => s.unit)]);
  ctx.host.mustRun(["systemctl", "restart", ...SERVICE_UNITS.map((s) => s.socket)]);
  ctx.host.mustRun(["systemctl", "start", "bangerd.service"]);
  ctx.say("started; waiting for the three services to answer…");
  return await waitAndReport(ctx, metadata);
}

async function waitAndReport(ctx: SystemContext, metadata: InstallMetadata): Promise<LiveStatus> {
  const status = await waitForHealth(metadata.paths.sockets.orchestrator, ctx.healthTimeoutMs);
  if (!allAnswer(status)) {
    const silent = status.services.filter((s) => !s.reachable).map((s) => `${s.name}: ${s.detail}`);
    throw new Error(
      `not every service answered within ${Math.round(ctx.healthTimeoutMs / 1000)} s (${silent.join("; ")}); ` +
        `see banger system status and journalctl -u bangerd -u banger-privileged -u banger-image-puller`,
    );
  }
  return status;
}

// ------------------------------------------------------------------ restart

export async function restart(ctx: SystemContext): Promise<LiveStatus> {
  requireRoot(ctx, "restart");
  requireSystemd(ctx, "restart", false);
  const metadata = readMetadata(SYSTEM_PATHS.metadataFile);
  if (!metadata)
    throw new RefusedError(`banger is not installed (no ${SYSTEM_PATHS.metadataFile}): sudo banger system install`);
  // bangerd depends on the other two: stop it, restart them, start it again.
  ctx.host.mustRun(["systemctl", "stop", "bangerd.service"]);
  ctx.host.mustRun(["systemctl", "restart", "banger-privileged.service", "banger-image-puller.service"]);
  ctx.host.mustRun(["systemctl", "start", "bangerd.service"]);
  ctx.say("restarted banger-privileged, banger-image-puller, bangerd; waiting for the three services to answer…");
  return await waitAndReport(ctx, metadata);
}

// ------------------------------------------------------------------ uninstall

export interface UninstallOptions {
  readonly root?: string;
  readonly purge: boolean;
}

export function uninstall(ctx: SystemContext, options: UninstallOptions): void {
  requireRoot(ctx, "uninstall");
  const root = checkRootOption(options.root);
  if (root.live) requireSystemd(ctx, "uninstall", true);
  const metadata = readMetadata(root.file(SYSTEM_PATHS.metadataFile));
  const presentUnits = UNIT_FILES.filter((unit) => existsSync(root.unitFile(unit)));
  if (!metadata && presentUnits.length === 0) {
    ctx.say(`banger is not installed${root.live ? "" : ` under ${root.root}`}: nothing to remove`);
    return;
  }
  if (options.purge && root.live) {
    const vmsDir = SYSTEM_PATHS.runtime.vmsDir;
    const vms = existsSync(vmsDir) ? readdirSync(vmsDir) : [];
    if (vms.length > 0) {
      throw new RefusedError(
        `${vms.length} VM(s) still have runtime directories in ${vmsDir} (${vms.join(", ")}): ` +
          `delete them first (banger vm delete NAME), then uninstall --purge; nothing was changed`,
      );
    }
  }

  if (root.live) {
    // Services first (bangerd before its peers), then their sockets.
    const stopOrder = [...[...SERVICE_UNITS].reverse().map((s) => s.unit), ...SERVICE_UNITS.map((s) => s.socket)];
    ctx.host.run(["systemctl", "stop", ...stopOrder]);
    // The sockets' RemoveOnStop= removes their files; the runtime directory goes too when no VM has one there.
    removeIfEmpty(SYSTEM_PATHS.runtime.vmsDir);
    removeIfEmpty(SYSTEM_PATHS.runtime.runtimeDir);
    const network = removeHostNetwork(ctx.host, options.purge ? "all" : "pool");
    if (network.length > 0) ctx.say(`removed ${network.join(" ")}`);
  }
  const enabled = ENABLED_UNITS.filter((unit) => presentUnits.includes(unit));
  if (enabled.length > 0) {
    ctx.host.mustRun(["systemctl", ...(root.live ? [] : [`--root=${root.root}`]), "disable", ...enabled]);
  }
  for (const unit of presentUnits) rmSync(root.unitFile(unit), { force: true });
  const files = metadata?.files ?? [SYSTEM_PATHS.sysctlFile, SYSTEM_PATHS.sysusersFile, SYSTEM_PATHS.metadataFile];
  for (const file of new Set([...files, SYSTEM_PATHS.metadataFile])) rmSync(root.file(file), { force: true });
  // Only empty mount points of the stopped helper's view are in it.
  rmSync(root.file(SYSTEM_PATHS.helperRoot), { recursive: true, force: true });
  removeIfEmpty(root.file(SYSTEM_PATHS.metadataDir));
  if (root.live) ctx.host.run(["systemctl", "daemon-reload"]);
  ctx.say(`removed the units (${presentUnits.join(" ")}) and ${files.join(" ")}`);

  const kept = [SYSTEM_PATHS.stateDir, SYSTEM_PATHS.cacheDir];
  if (options.purge) {
    for (const dir of kept) rmSync(root.file(dir), { recursive: true, force: true });
    if (root.live) rmSync(SYSTEM_PATHS.runtime.runtimeDir, { recursive: true, force: true });
    ctx.say(`purged ${kept.join(" ")} (images, VMs, caches)`);
  } else {
    ctx.say(`kept ${kept.join(" ")} (images, VMs, caches); remove them with uninstall --purge`);
  }
  const home = metadata ? ` and ${join(metadata.owner.home, ".config", "banger")}` : "";
  ctx.say(`kept group ${BANGER_GROUP}, user ${PULLER_USER}${home}`);
}

function removeIfEmpty(dir: string): void {
  try {
    if (readdirSync(dir).length === 0) rmSync(dir, { recursive: true });
  } catch {
    // absent
  }
}
