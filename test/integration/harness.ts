/**
 * Starts banger's three real services as separate processes on Unix sockets in
 * a temporary directory, the way `banger dev up` does, and gives tests handles
 * to stop, kill and restart each one, run the CLI, and read the JSON logs.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { connect } from "node:net";
import { ConnectError } from "@connectrpc/connect";

export const ROOT = resolve(import.meta.dirname, "../..");
export const BANGER = join(ROOT, "bin/banger");

/**
 * Whether uid 1000 (the tests' owner user) can read this checkout: tests that
 * run code as that user need it. .ci/run makes it so; elsewhere those tests
 * are skipped and say why.
 */
export const OWNER_CAN_READ_CHECKOUT =
  process.getuid?.() === 0 &&
  spawnSync("setpriv", ["--reuid", "1000", "--regid", "1000", "--clear-groups", "test", "-r", join(ROOT, "bin/banger")])
    .status === 0;
if (process.getuid?.() === 0 && !OWNER_CAN_READ_CHECKOUT) {
  console.warn(`SKIPPING tests that run as uid 1000: it cannot read ${ROOT} (make its parent directories o+x)`);
}

export type ServiceName = "orchestrator" | "privileged" | "image-puller";

const ENTRY: Record<ServiceName, string> = {
  orchestrator: "services/orchestrator/dist/bundle/main.js",
  privileged: "services/privileged/dist/bundle/main.js",
  "image-puller": "services/image-puller/dist/bundle/main.js",
};

/** bangerd with failure injection (the installed one has none): see StartOptions.failAfterStages. */
const ORCHESTRATOR_WITH_FAULTS = "test/support/orchestrator-with-faults.mjs";

const SOCKET: Record<ServiceName, string> = {
  orchestrator: "orchestrator.sock",
  privileged: "privileged.sock",
  "image-puller": "image-puller.sock",
};

export interface RunningService {
  readonly child: ChildProcess;
  /** Every JSON line the service wrote to stdout so far. */
  readonly logs: Record<string, unknown>[];
  readonly stderr: string[];
  readonly exited: Promise<number | null>;
}

export interface Cluster {
  readonly dir: string;
  readonly runtimeDir: string;
  readonly stateDir: string;
  socket(name: ServiceName): string;
  /** Starts a service; `env` is added to its environment. */
  start(name: ServiceName, env?: NodeJS.ProcessEnv, options?: StartOptions): Promise<RunningService>;
  stop(name: ServiceName): Promise<void>;
  kill9(name: ServiceName): Promise<void>;
  service(name: ServiceName): RunningService;
  /** All log lines of all services that carry `opId`. */
  linesWithOpId(opId: string): Record<string, unknown>[];
  cli(args: readonly string[], env?: NodeJS.ProcessEnv): Promise<CliResult>;
  shutdown(): Promise<void>;
}

export interface StartOptions {
  /**
   * Orchestrator only: run it from the test entry that fails these create stages right after their work
   * succeeded (see createOperations) instead of from dist/bundle/main.js.
   */
  readonly failAfterStages?: readonly string[];
  /** Orchestrator only: likewise, stages that wait this many ms before their work (a cancel waits for them). */
  readonly delayStages?: Readonly<Record<string, number>>;
}

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface SpawnOptions {
  /** Run this file (relative to the checkout) instead of the service's dist/bundle/main.js. */
  readonly entry?: string;
  /** Run as this uid and gid (the owner) instead of the test's own. */
  readonly owner?: number;
  /** Run inside this network namespace (`ip netns exec`). */
  readonly netns?: string;
  /** Run as the systemd unit would: `--jitless` under the kernel's W^X refusal (see MDWE_WRAPPER). */
  readonly unitSandbox?: boolean;
  /** Run with exactly these credentials, umask and capability bounding set (through setpriv). */
  readonly identity?: Identity;
  /**
   * The puller unit's view of the state directory (TemporaryFileSystem=<state>:ro with only
   * images/.staging and cache/ bound in), in a mount namespace of its own. Needs `--state-dir` in args.
   */
  readonly pullerView?: boolean;
  /**
   * Bind UDP and TCP port 53 on this address (with IP_FREEBIND, as root) and pass them to the
   * service as systemd's bangerd-dns.socket does: fds 3 and 4, LISTEN_FDNAMES=dns:dns.
   */
  readonly passDnsSockets?: string;
}

/** What bangerd-dns.socket does, in python: bind as root, then exec the rest (same pid) with the fds. */
function dnsSocketsPrefix(address: string): string[] {
  const code = [
    "import os, socket, sys",
    "fds = []",
    "for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):",
    "    s = socket.socket(socket.AF_INET, kind)",
    "    s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND",
    "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)",
    "    s.bind((sys.argv[1], 53))",
    "    if kind == socket.SOCK_STREAM: s.listen(64)",
    "    fds.append(s)",
    "for i, s in enumerate(fds):",
    "    os.dup2(s.fileno(), 3 + i)",
    "    os.set_inheritable(3 + i, True)",
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='2', LISTEN_FDNAMES='dns:dns')",
    "os.execvp(sys.argv[2], sys.argv[2:])",
  ].join("\n");
  return ["python3", "-c", code, address];
}

/** `unshare -m` and mounts that give the puller its unit's view of `stateDir` (see SpawnOptions.pullerView). */
function pullerViewPrefix(stateDir: string): string[] {
  const script = [
    'state="$1"; shift',
    'keep=$(mktemp -d); mkdir "$keep/staging" "$keep/cache"',
    'mount --bind "$state/images/.staging" "$keep/staging"',
    'mount --bind "$state/cache" "$keep/cache"',
    'mount -t tmpfs -o mode=0755 banger-state "$state"',
    'mkdir -p "$state/images/.staging" "$state/cache"',
    'mount --move "$keep/staging" "$state/images/.staging"',
    'mount --move "$keep/cache" "$state/cache"',
    'mount -o remount,ro,bind "$state"',
    'exec "$@"',
  ].join(" && ");
  return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", stateDir];
}

/** Who a service runs as, as its installed unit makes it (User=, Group=, SupplementaryGroups=, UMask=, …). */
export interface Identity {
  readonly uid: number;
  readonly gid: number;
  readonly groups?: readonly number[];
  /** Octal, e.g. "0027". */
  readonly umask: string;
  /** Capabilities taken out of the bounding set (for root: out of what it holds), e.g. "dac_override". */
  readonly dropCapabilities?: readonly string[];
}

function identityPrefix(identity: Identity): string[] {
  return [
    "setpriv",
    "--reuid",
    String(identity.uid),
    "--regid",
    String(identity.gid),
    ...(identity.groups?.length ? ["--groups", identity.groups.join(",")] : ["--clear-groups"]),
    ...(identity.dropCapabilities?.length
      ? [`--bounding-set=${identity.dropCapabilities.map((c) => `-${c}`).join(",")}`]
      : []),
    "--",
    "sh",
    "-c",
    `umask ${identity.umask} && exec "$@"`,
    "sh",
  ];
}

/**
 * `python3 … prctl(PR_SET_MDWE)` then exec: the kernel's own refusal of
 * writable-executable memory, which systemd's MemoryDenyWriteExecute=yes
 * amounts to (inherited by every child). Undefined when this kernel or
 * machine cannot do it.
 */
export const MDWE_WRAPPER = ((): string[] | undefined => {
  const code =
    "import ctypes,os,sys\n" +
    "if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0: sys.exit(99)\n" +
    "os.execvp(sys.argv[1], sys.argv[1:])";
  const probe = spawnSync("python3", ["-c", code, "true"]);
  return probe.status === 0 ? ["python3", "-c", code] : undefined;
})();

export function spawnService(
  name: ServiceName,
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
  options: SpawnOptions = {},
): RunningService {
  // As the helper's unit runs it: no writable-executable memory (inherited by its VMMs), so Node runs --jitless.
  const entry = join(ROOT, options.entry ?? ENTRY[name]);
  const argv = options.unitSandbox
    ? [...(MDWE_WRAPPER ?? []), process.execPath, "--jitless", entry, ...args]
    : [process.execPath, entry, ...args];
  // In a namespace as the owner: `ip netns exec` needs root, so it drops to the owner with setpriv.
  const stateDir = args[args.indexOf("--state-dir") + 1] ?? "";
  const asOwner = options.identity
    ? [...(options.pullerView ? pullerViewPrefix(stateDir) : []), ...identityPrefix(options.identity)]
    : options.netns && options.owner !== undefined
      ? ["setpriv", "--reuid", String(options.owner), "--regid", String(options.owner), "--clear-groups", "--"]
      : [];
  const dns = options.passDnsSockets ? dnsSocketsPrefix(options.passDnsSockets) : [];
  const [command = "", ...rest] = options.netns
    ? ["ip", "netns", "exec", options.netns, ...dns, ...asOwner, ...argv]
    : [...dns, ...asOwner, ...argv];
  const child = spawn(command, rest, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...env },
    ...(options.owner !== undefined && !options.netns && !options.identity
      ? { uid: options.owner, gid: options.owner }
      : {}),
  });
  const logs: Record<string, unknown>[] = [];
  const stderr: string[] = [];
  let buffered = "";
  child.stdout.on("data", (chunk: Buffer) => {
    buffered += chunk.toString();
    const lines = buffered.split("\n");
    buffered = lines.pop() ?? "";
    for (const line of lines) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
  });
  child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk.toString()));
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  return { child, logs, stderr, exited };
}

export interface ClusterOptions {
  /**
   * Run the orchestrator and the puller as this uid (and gid), and the helper
   * as root with it as its owner, as an installed banger does.
   */
  readonly owner?: number;
  /** Run the privileged helper inside this network namespace. */
  readonly netns?: string;
  /**
   * Run the orchestrator in `netns` too, as on a real host where it shares the helper's network: it
   * then reaches guests and serves `.vm` DNS on the bridge. (The puller stays outside, next to the
   * tests' registry on 127.0.0.1.)
   */
  readonly orchestratorInNetns?: boolean;
  /** Run the image puller in `netns` too: with no registry of the tests' there, a machine offline. */
  readonly pullerInNetns?: boolean;
  /** Hand the orchestrator its DNS sockets on this address as the installed units do (see SpawnOptions). */
  readonly orchestratorDnsSockets?: string;
  /**
   * The owner's config.toml (written to the cluster's own config directory before anything starts), with
   * `vmm = "firecracker"` put first unless it names a VMM.
   */
  readonly configToml?: string;
  /** Run the helper as its systemd unit does: `--jitless` with no writable-executable memory. */
  readonly helperUnitSandbox?: boolean;
  /**
   * The installed permission model (deploy/systemd): bangerd as the owner with group `banger` and
   * umask 0027; the puller as its own user (umask 0022) writing into the setgid staging directory;
   * the helper as root in both groups without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER.
   * The state layout is made as `banger system install` makes it. What stands in for systemd's
   * socket units: the runtime directory is world-writable (sticky) and the puller's socket is handed
   * to the owner once it listens.
   */
  readonly installed?: { readonly bangerGid: number; readonly pullerUid: number; readonly pullerGid: number };
  /** Extra arguments for the helper (e.g. `--firecracker-bin` pointing at the fake). */
  readonly helperArgs?: readonly string[];
}

/** How each service runs under the installed units (see ClusterOptions.installed). */
function installedIdentity(
  name: ServiceName,
  owner: number,
  ids: { readonly bangerGid: number; readonly pullerUid: number; readonly pullerGid: number },
): { identity: Identity; pullerView?: true } {
  if (name === "orchestrator") return { identity: { uid: owner, gid: ids.bangerGid, umask: "0027" } };
  if (name === "image-puller") {
    return { identity: { uid: ids.pullerUid, gid: ids.pullerGid, umask: "0022" }, pullerView: true };
  }
  return {
    identity: {
      uid: 0,
      gid: 0,
      groups: [ids.bangerGid, ids.pullerGid],
      umask: "0077",
      dropCapabilities: ["dac_override", "dac_read_search", "fowner"],
    },
  };
}

export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  const dir = mkdtempSync(join(tmpdir(), "banger-it-"));
  const runtimeDir = join(dir, "run");
  const stateDir = join(dir, "state");
  const { owner } = options;
  const running = new Map<ServiceName, RunningService>();
  const socket = (name: ServiceName) => join(runtimeDir, SOCKET[name]);

  const start = async (name: ServiceName, extraEnv: NodeJS.ProcessEnv = {}, startOptions: StartOptions = {}) => {
    const faults = startOptions.failAfterStages ?? [];
    const delays = Object.entries(startOptions.delayStages ?? {}).map(([stage, ms]) => `${stage}:${ms}`);
    if (faults.length + delays.length > 0 && name !== "orchestrator")
      throw new Error(`failAfterStages is the orchestrator's, not ${name}'s`);
    const args = ["--runtime-dir", runtimeDir];
    args.push("--state-dir", stateDir);
    if (name === "privileged" && owner !== undefined) {
      args.push("--owner-uid", String(owner), "--owner-gid", String(owner), ...(options.helperArgs ?? []));
    }
    // The services read the owner's config directory: a fresh one per cluster, never the real one.
    const env = {
      XDG_CONFIG_HOME: join(dir, "config"),
      ...(owner !== undefined ? { HOME: dir } : {}),
      ...extraEnv,
      ...(faults.length > 0 ? { BANGER_FAIL_AFTER_STAGE: faults.join(",") } : {}),
      ...(delays.length > 0 ? { BANGER_DELAY_STAGE: delays.join(",") } : {}),
    };
    const inNetns =
      options.netns &&
      (name === "privileged" ||
        (name === "orchestrator" && options.orchestratorInNetns) ||
        (name === "image-puller" && options.pullerInNetns))
        ? { netns: options.netns }
        : {};
    const installed = options.installed && owner !== undefined ? installedIdentity(name, owner, options.installed) : {};
    const svc = spawnService(name, args, env, {
      ...(faults.length + delays.length > 0 ? { entry: ORCHESTRATOR_WITH_FAULTS } : {}),
      ...inNetns,
      ...(name === "privileged" && options.helperUnitSandbox ? { unitSandbox: true } : {}),
      ...(name === "orchestrator" && options.orchestratorDnsSockets
        ? { passDnsSockets: options.orchestratorDnsSockets }
        : {}),
      ...(name !== "privileged" && owner !== undefined ? { owner } : {}),
      ...installed,
    });
    running.set(name, svc);
    await waitUntil(() => svc.logs.some((l) => l["msg"] === "listening"), svc, `${name} to listen`);
    // What the socket units set (SocketUser=, SocketGroup=, SocketMode=), done by hand here.
    if (name === "image-puller" && options.installed && owner !== undefined) chownSync(socket(name), owner, owner);
    if (name === "privileged" && options.installed) {
      chownSync(socket(name), 0, options.installed.bangerGid);
      chmodSync(socket(name), 0o660);
    }
    return svc;
  };
  const stop = async (name: ServiceName) => {
    const svc = running.get(name);
    if (!svc) return;
    svc.child.kill("SIGTERM");
    await svc.exited;
  };
  const kill9 = async (name: ServiceName) => {
    const svc = running.get(name);
    if (!svc) return;
    svc.child.kill("SIGKILL");
    await svc.exited;
  };

  mkdirSync(runtimeDir, { recursive: true, mode: 0o700 });
  {
    // Firecracker unless the test says otherwise: the fake VMM speaks its API, and "auto" (the default) would
    // take QEMU on a machine without KVM.
    const toml = options.configToml ?? "";
    mkdirSync(join(dir, "config", "banger"), { recursive: true });
    writeFileSync(
      join(dir, "config", "banger", "config.toml"),
      /^vmm\s*=/m.test(toml) ? toml : `vmm = "firecracker"\n${toml}`,
    );
    if (owner !== undefined) {
      for (const path of ["config", "config/banger", "config/banger/config.toml"])
        chownSync(join(dir, path), owner, owner);
    }
  }
  if (owner !== undefined) {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    for (const path of [dir, runtimeDir, stateDir]) chownSync(path, owner, owner);
  }
  if (options.installed && owner !== undefined) {
    const { bangerGid, pullerUid, pullerGid } = options.installed;
    chmodSync(runtimeDir, 0o1777);
    chmodSync(dir, 0o755); // as /var/lib is: the puller and the helper (no DAC override) pass through
    for (const [path, uid, gid, mode] of [
      [stateDir, owner, bangerGid, 0o750],
      [join(stateDir, "images"), owner, bangerGid, 0o750],
      [join(stateDir, "images", ".staging"), owner, pullerGid, 0o2770],
      [join(stateDir, "cache"), pullerUid, pullerGid, 0o700],
    ] as const) {
      mkdirSync(path, { recursive: true });
      chownSync(path, uid, gid);
      chmodSync(path, mode);
    }
  }
  for (const name of ["privileged", "image-puller", "orchestrator"] as const) await start(name);

  return {
    dir,
    runtimeDir,
    stateDir,
    socket,
    start,
    stop,
    kill9,
    service: (name) => {
      const svc = running.get(name);
      if (!svc) throw new Error(`${name} was never started`);
      return svc;
    },
    linesWithOpId: (opId) => [...running.values()].flatMap((s) => s.logs.filter((l) => l["op_id"] === opId)),
    cli: (args, env = {}) => runCli(args, { BANGER_RUNTIME_DIR: runtimeDir, ...env }),
    shutdown: async () => {
      for (const name of running.keys()) await stop(name);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function runCli(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(BANGER, args, { env: { ...process.env, BANGER_SOCKET: "", ...env } });
    let stdout = "";
    let stderr = "";
    // A command that hangs fails its test with what it printed, instead of the test's timeout.
    const timer = setTimeout(() => {
      stderr += `\n[harness: banger ${args.join(" ")} still running after 60 s; killed]\n`;
      child.kill("SIGKILL");
    }, 60_000);
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.once("error", reject);
    // "close" comes once the output pipes are drained too ("exit" can come before the last lines are read);
    // a descendant that kept them open is not waited for beyond 2 s after the CLI exited.
    let done = false;
    const finish = (code: number | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    };
    child.once("close", (code) => finish(code));
    child.once("exit", (code) => setTimeout(() => finish(code), 2_000).unref());
  });
}

export async function waitUntil(
  condition: () => boolean | Promise<boolean>,
  svc: RunningService | undefined,
  what: string,
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (svc && svc.child.exitCode !== null) {
      throw new Error(
        `gave up waiting for ${what}: the process exited (${svc.stderr.join("")}${JSON.stringify(svc.logs)})`,
      );
    }
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Whether something accepts connections on a Unix socket. */
export function socketAnswers(path: string): Promise<boolean> {
  return new Promise((r) => {
    const s = connect(path);
    s.once("connect", () => (s.destroy(), r(true)));
    s.once("error", () => r(false));
  });
}

/** The ConnectError a call fails with; the test fails if the call succeeds. */
export async function failure(call: () => Promise<unknown>): Promise<ConnectError> {
  try {
    await call();
  } catch (error) {
    if (error instanceof ConnectError) return error;
    throw error;
  }
  throw new Error("the call succeeded");
}
