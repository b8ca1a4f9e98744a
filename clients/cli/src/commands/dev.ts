import { createWriteStream, readFileSync, type WriteStream } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { HostCommandError } from "@banger/common/errors";
import { streamProcess, type StreamedRun } from "@banger/common/host-runner";
import { runtimeLayout, stateLayout, type RuntimeLayout, type StateLayout } from "@banger/common/layout";
import { checkSocketPathLength, probeSocket } from "@banger/common/socket-path";
import type { Command } from "commander";
import { resolveOrchestratorSocket } from "../context.js";
import { defaultDevDirs, type DevDirs } from "../dev-dirs.js";
import { UsageError } from "../errors.js";
import { SERVICE_UNITS } from "../system/layout.js";
import { unitNodeLaunch } from "../system/render.js";
import { devBridgeAddress, findOnPath, withDnsSockets } from "./dev-dns.js";
import { openLogFile, openOwnedDir, openRootDir, type OpenDir } from "./dev-files.js";

/** The checkout this CLI was built in (clients/cli/dist/banger.js → the repository root). */
const CHECKOUT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

interface ServiceSpec {
  readonly name: "privileged" | "image-puller" | "orchestrator";
  readonly entry: string;
  readonly args: readonly string[];
  readonly socket: string;
  /** Runs as the invoking user when `dev up` runs under sudo; the helper alone stays root. */
  readonly asOwner: boolean;
}

/** The `.vm` DNS binder of a dev up as root: python3 and the bridge address it binds port 53 on. */
interface DevDns {
  readonly python: string;
  readonly address: string;
}

/** Who VMs run as under `dev up` as root: the orchestrator and the puller run as this user, the helper answers only it. */
export interface DevOwner {
  readonly uid: number;
  readonly gid: number;
  /** From /etc/passwd; undefined for a uid without an entry (the state directory stands in). */
  readonly home: string | undefined;
}

const NO_OWNER =
  "dev up runs as root without an owner, and VMs never run as root: pass --owner USER (the user who will run " +
  "VMs and the CLI), or run it with sudo from your user (sudo ./bin/banger dev up …); nothing was started";

/**
 * The owner of a `dev up` run as root: `--owner` (a name or uid in /etc/passwd, or a bare uid, whose group is
 * then the same number), else the user behind `sudo` (SUDO_UID/SUDO_GID). Root itself is never the owner: as
 * plain root with neither, or with `--owner root`, dev up refuses before it starts or makes anything. Not
 * root, there is no owner (everything runs as the caller), and `--owner` is refused.
 */
export function devOwner(
  option: string | undefined,
  env: NodeJS.ProcessEnv,
  euid: number | undefined,
  passwd: () => string = () => readFileSync("/etc/passwd", "utf8"),
): DevOwner | undefined {
  const entries = () => {
    try {
      return passwd()
        .split("\n")
        .map((line) => line.split(":"))
        .filter((fields) => fields.length >= 7);
    } catch {
      return [];
    }
  };
  const homeOf = (fields: string[] | undefined) => fields?.[5] || undefined;
  if (euid !== 0) {
    if (option !== undefined) {
      throw new UsageError(
        "--owner needs root: dev up then runs the helper as root and everything else as the owner (sudo ./bin/banger dev up --owner USER …)",
      );
    }
    return undefined;
  }
  if (option !== undefined) {
    const byName = entries().find((fields) => fields[0] === option);
    const numeric = /^\d+$/.test(option) ? Number(option) : undefined;
    const entry = byName ?? (numeric === undefined ? undefined : entries().find((fields) => fields[2] === option));
    if (!entry && numeric === undefined) throw new UsageError(`--owner ${option}: no such user in /etc/passwd`);
    const uid = entry ? Number(entry[2]) : (numeric ?? 0);
    const gid = entry ? Number(entry[3]) : uid;
    if (uid === 0 || !Number.isSafeInteger(uid)) {
      throw new UsageError(`--owner ${option} is root: VMs never run as root; name the user who will run them`);
    }
    if (gid === 0 || !Number.isSafeInteger(gid)) {
      throw new UsageError(
        `--owner ${option}'s group is root (gid 0): VMs never run with it; give the user a group of its own`,
      );
    }
    return { uid, gid, home: homeOf(entry) };
  }
  const uid = Number(env["SUDO_UID"]);
  const gid = Number(env["SUDO_GID"]);
  if (!Number.isInteger(uid) || uid <= 0 || !Number.isInteger(gid) || gid <= 0) throw new UsageError(NO_OWNER);
  return { uid, gid, home: homeOf(entries().find((fields) => fields[2] === String(uid))) };
}

/** `dev up`. */
export function registerDevCommands(dev: Command): void {
  dev
    .command("up")
    .description(
      "run the three services in the foreground; Ctrl-C stops all three. As root the helper runs as root and the " +
        "others as the owner, who alone may call it and whose uid VMs run as: the user behind sudo, or --owner; plain " +
        "root with neither is refused. Sockets in --runtime-dir, state in --state-dir, logs in <state-dir>/logs/" +
        "<service>.jsonl; by default, as root, /run/banger-dev/<owner uid> and /var/lib/banger-dev/<owner uid> " +
        "(the owner's, 0700), else $XDG_RUNTIME_DIR/banger-dev and ~/.local/state/banger-dev. The CLI run by the " +
        "owner finds these sockets with no variable set (when no installed banger's are there)",
    )
    .option("--runtime-dir <dir>", "directory for the three sockets (created 0700; default above)")
    .option("--state-dir <dir>", "directory for state and logs (default above)")
    .option("--firecracker <path>", "the Firecracker binary the helper launches (default: /usr/local/bin/firecracker)")
    .option(
      "--owner <user>",
      "as root: the user (name or uid) VMs, the orchestrator and the puller run as (default: the user behind sudo)",
    )
    .option("--json", "print the services' raw JSON log lines instead of a readable form")
    .action(
      async (opts: {
        runtimeDir?: string;
        stateDir?: string;
        firecracker?: string;
        owner?: string;
        json?: boolean;
      }) => {
        // Decided before anything is probed, made or started.
        const owner = devOwner(opts.owner, process.env, process.geteuid?.());
        const helperArgs = opts.firecracker ? ["--firecracker", resolve(opts.firecracker)] : [];
        const defaults = defaultDevDirs(owner?.uid ?? process.geteuid?.() ?? 0, owner !== undefined);
        const dirs = {
          runtimeDir: opts.runtimeDir === undefined ? undefined : resolve(opts.runtimeDir),
          stateDir: opts.stateDir === undefined ? undefined : resolve(opts.stateDir),
        };
        await devUp(dirs, defaults, owner, opts.json === true, helperArgs);
      },
    );
}

/**
 * Opens (making it) one of dev up's two directories: a named one as it is (dev-files.ts), a default one
 * of a dev up as root inside its root-owned parent (dev-dirs.ts), so the owner can have planted nothing.
 */
function openDevDir(path: string, isDefault: boolean, owner: DevOwner | undefined): OpenDir {
  if (!owner || !isDefault) return openOwnedDir(path, owner);
  const parent = openRootDir(dirname(path));
  try {
    return openOwnedDir(path, owner, parent);
  } finally {
    parent.close();
  }
}

async function devUp(
  named: { runtimeDir: string | undefined; stateDir: string | undefined },
  defaults: DevDirs,
  owner: DevOwner | undefined,
  json: boolean,
  helperArgs: string[],
): Promise<void> {
  const runtimeDir = named.runtimeDir ?? defaults.runtimeDir;
  const stateDir = named.stateDir ?? defaults.stateDir;
  const runtime = runtimeLayout(runtimeDir);
  const state = stateLayout(stateDir);
  await checkNotRunning(runtimeDir, runtime);
  const dns = owner ? await devDns(owner, stateDir) : undefined;
  // Under sudo the directories belong to the user, who runs the orchestrator, the puller and the
  // CLI; root (this process, the helper) works in them only through checked open directories.
  openDevDir(runtimeDir, named.runtimeDir === undefined, owner).close();
  const stateDirFd = openDevDir(stateDir, named.stateDir === undefined, owner);
  const logDir = openOwnedDir(state.logDir, owner, stateDirFd);
  stateDirFd.close();

  const specs = serviceSpecs(runtimeDir, stateDir, owner, helperArgs);

  const who = owner ? `the helper as root, the others as uid ${owner.uid}` : "all as this user";
  process.stderr.write(
    `banger dev: sockets in ${runtimeDir}, state in ${stateDir}, logs in ${state.logDir} (${who})\n`,
  );

  // Every log opened (and checked) before any service starts: a refused one leaves nothing running.
  const logs = openLogs(specs, logDir, state, owner);

  const children = new Map<string, StreamedRun>();
  let stopping = false;
  const exitedEarly = (name: string, how: string) => {
    children.delete(name);
    if (!stopping) {
      process.stderr.write(`banger dev: ${name} exited (${how}); the others keep running, Ctrl-C to stop\n`);
    }
  };
  const stopAll = async (code: number) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write("banger dev: stopping…\n");
    await Promise.all([...children.values()].map((child) => stopChild(child)));
    process.exit(code);
  };
  process.once("SIGINT", () => void stopAll(0));
  process.once("SIGTERM", () => void stopAll(0));

  for (const spec of specs) {
    const log = logs.get(spec.name);
    if (!log) throw new Error(`no log opened for ${spec.name}`);
    const child = startService(spec, owner, dns, stateDir);
    children.set(spec.name, child);
    forwardOutput(child, spec.name, log, json);
    void child.exited.then(
      () => exitedEarly(spec.name, "code 0"),
      (error: unknown) =>
        exitedEarly(
          spec.name,
          !(error instanceof HostCommandError)
            ? (error as Error).message
            : error.exitCode === null
              ? "killed by a signal"
              : `code ${error.exitCode}`,
        ),
    );
    if (!(await waitForSocket(spec.socket, child, 10_000))) {
      process.stderr.write(`banger dev: ${spec.name} did not start (see ${state.logFile(spec.name)})\n`);
      await stopAll(1);
      return;
    }
  }
  printReady(runtimeDir, stateDir, runtime.orchestratorSocket, owner);
  await new Promise<never>(() => {}); // runs until a signal
}

/** Refuses a runtime directory whose socket paths are too long, or where banger already answers. */
async function checkNotRunning(runtimeDir: string, runtime: RuntimeLayout): Promise<void> {
  for (const socket of [runtime.orchestratorSocket, runtime.privilegedSocket, runtime.pullerSocket]) {
    try {
      checkSocketPathLength(socket);
    } catch (error) {
      throw new UsageError(`the runtime directory ${runtimeDir} is too long: ${(error as Error).message}`);
    }
    if (await probeSocket(socket)) {
      throw new Error(`banger is already running in ${runtimeDir} (${socket} answers); stop it first`);
    }
  }
}

/** `.vm` DNS: port 53 bound as root for the orchestrator (the owner), as bangerd-dns.socket does. */
async function devDns(owner: DevOwner, stateDir: string): Promise<DevDns | undefined> {
  const say = (line: string) => process.stderr.write(`banger dev: ${line}\n`);
  let address: string;
  try {
    ({ address } = await devBridgeAddress(join(owner.home ?? stateDir, ".config", "banger"), owner, say));
  } catch (error) {
    throw new Error(`${(error as Error).message}; fix it; nothing was started`);
  }
  const python = findOnPath("python3");
  if (python) return { python, address };
  say(`python3 not found: nothing binds port 53 on ${address} for the orchestrator, so <name>.vm will not resolve`);
  return undefined;
}

/** The three services in the order they start: the helper, the puller, the orchestrator. */
function serviceSpecs(
  runtimeDir: string,
  stateDir: string,
  owner: DevOwner | undefined,
  helperArgs: string[],
): ServiceSpec[] {
  const runtime = runtimeLayout(runtimeDir);
  const common = ["--runtime-dir", runtimeDir];
  const ownerArgs = owner ? ["--owner-uid", String(owner.uid), "--owner-gid", String(owner.gid)] : [];
  return [
    {
      name: "privileged",
      entry: "services/privileged/dist/bundle/main.js",
      args: [...common, "--state-dir", stateDir, ...ownerArgs, ...helperArgs],
      socket: runtime.privilegedSocket,
      asOwner: false,
    },
    {
      name: "image-puller",
      entry: "services/image-puller/dist/bundle/main.js",
      args: [...common, "--state-dir", stateDir],
      socket: runtime.pullerSocket,
      asOwner: true,
    },
    {
      name: "orchestrator",
      entry: "services/orchestrator/dist/bundle/main.js",
      args: [...common, "--state-dir", stateDir],
      socket: runtime.orchestratorSocket,
      asOwner: true,
    },
  ];
}

/** Opens every service's log (the owner's, checked) in `logDir`, then closes `logDir`; on a refusal, none stays open. */
function openLogs(
  specs: readonly ServiceSpec[],
  logDir: OpenDir,
  state: StateLayout,
  owner: DevOwner | undefined,
): Map<string, WriteStream> {
  const logs = new Map<string, WriteStream>();
  try {
    for (const spec of specs) {
      const fd = openLogFile(logDir, basename(state.logFile(spec.name)), owner);
      logs.set(spec.name, createWriteStream(state.logFile(spec.name), { fd }));
    }
  } catch (error) {
    for (const log of logs.values()) log.destroy();
    throw error;
  } finally {
    logDir.close();
  }
  return logs;
}

/** Starts one service: as the owner when it runs as the owner, the orchestrator behind the DNS binder. */
function startService(spec: ServiceSpec, owner: DevOwner | undefined, dns: DevDns | undefined, stateDir: string) {
  // node's options and environment as the service's unit gives them (--jitless, --expose-gc, MALLOC_ARENA_MAX).
  const unit = SERVICE_UNITS.find((u) => u.service === spec.name)?.unit ?? "";
  const launch = unitNodeLaunch(unit, CHECKOUT);
  const argv = [process.execPath, ...launch.nodeArgs, resolve(CHECKOUT, spec.entry), ...spec.args];
  // The orchestrator behind the DNS binder, which drops to the owner itself once port 53 is bound.
  const behindDns = owner && dns && spec.name === "orchestrator";
  const [command = "", ...args] =
    owner && dns && behindDns ? withDnsSockets(dns.python, dns.address, owner, argv) : argv;
  return streamProcess([command, ...args], {
    ...(owner && spec.asOwner
      ? {
          ...(behindDns ? {} : { as: { uid: owner.uid, gid: owner.gid } }),
          // The owner's config directory, not root's (sudo keeps HOME=/root on some systems);
          // an owner without a passwd entry gets the state directory as its home.
          env: { ...process.env, ...launch.env, HOME: owner.home ?? stateDir, XDG_CONFIG_HOME: "" },
        }
      : { env: { ...process.env, ...launch.env } }),
  });
}

/** What the owner types: nothing more than the command when the CLI finds these sockets by itself. */
function printReady(runtimeDir: string, stateDir: string, orchestratorSocket: string, owner: DevOwner | undefined) {
  const cliUid = owner?.uid ?? process.geteuid?.();
  const unset = { ...process.env, BANGER_SOCKET: "", BANGER_RUNTIME_DIR: "" };
  const found = resolveOrchestratorSocket({}, unset, cliUid) === orchestratorSocket;
  const as = owner ? ` (as uid ${owner.uid}${owner.home ? "" : `, HOME=${stateDir}`})` : "";
  process.stderr.write(
    `banger dev: orchestrator, privileged and image-puller are up in ${runtimeDir}\n` +
      `banger dev: try${as}: ${found ? "" : `BANGER_RUNTIME_DIR=${runtimeDir} `}./bin/banger vm run -- uname -a\n`,
  );
}

function forwardOutput(child: StreamedRun, name: string, log: WriteStream, json: boolean): void {
  createInterface({ input: child.stdout }).on("line", (line) => {
    log.write(line + "\n");
    process.stdout.write((json ? line : readableLogLine(line)) + "\n");
  });
  createInterface({ input: child.stderr }).on("line", (line) => {
    process.stderr.write(`${name}: ${line}\n`);
  });
}

/** `12:01:02.123 orchestrator op-… rpc completed rpc=… code=ok duration_ms=1.2` */
export function readableLogLine(line: string): string {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const { time, level, service, op_id: opId, msg, ...rest } = entry;
  const clock = typeof time === "string" ? time.slice(11, 23) : "";
  const extras = Object.entries(rest)
    .filter(([key]) => key !== "pid" && key !== "hostname")
    .map(([key, value]) => `${key}=${typeof value === "string" ? value : JSON.stringify(value)}`);
  const head = [
    clock,
    (typeof service === "string" ? service : "?").padEnd(12),
    level === "info" ? "" : String(level).toUpperCase(),
    opId ?? "",
  ];
  return [...head.filter((p) => p !== ""), msg, ...extras].join(" ");
}

async function waitForSocket(socket: string, child: StreamedRun, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!child.running()) return false;
    if (await probeSocket(socket, 200).catch(() => false)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

async function stopChild(child: StreamedRun): Promise<void> {
  if (!child.running()) return;
  const timer = setTimeout(() => child.stop("SIGKILL"), 10_000);
  child.stop("SIGTERM");
  await child.exited.catch(() => undefined);
  clearTimeout(timer);
}
