/**
 * What the end-to-end suites with real guests share: what the machine must
 * have, a throwaway network namespace, a real registry on 127.0.0.1, this
 * machine's Debian kernel in a package's layout, and the three services run
 * as an installed banger runs them (the owner uid 1000, the helper in the
 * namespace as its unit sandboxes it, the `.vm` DNS sockets bound as root and
 * handed over), driven through the real CLI. Each CLI step prints its time.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "vitest";
import { requireTools, type Need } from "@banger/common/testing";
import {
  startRegistry,
  type RegistryProcess,
} from "../../../services/image-puller/test-support/registry/registry-process.js";
import {
  OWNER_CAN_READ_CHECKOUT,
  ROOT,
  startCluster,
  type CliResult,
  type Cluster,
  type ClusterOptions,
} from "../../integration/harness.js";
import { IS_ROOT, createNetNs, type NetNs } from "../../integration/netns.js";
import { KERNEL_VERSION, TCG_GUEST_CONFIG, writeKernelPackage } from "./kernel-package.js";
import { OFFLINE_GUEST_NEEDS, REAL_GUEST_NEEDS } from "./needs.js";

export const OWNER = 1000;

/**
 * What this machine lacks for `suite`'s real guests (empty when it has everything): root and a checkout uid
 * 1000 can read, then every host tool (support/needs.ts; without the registry's for an offline suite) and `extra`,
 * said in one line naming the setup command.
 */
export function guestSuiteMissing(
  suite: string,
  extra: readonly Need[] = [],
  { registry = true }: { readonly registry?: boolean } = {},
): string[] {
  const unable = [!IS_ROOT && "root", !OWNER_CAN_READ_CHECKOUT && "a checkout uid 1000 can read"].filter(
    (m): m is string => typeof m === "string",
  );
  if (unable.length > 0) {
    console.warn(`SKIPPING ${suite}: it needs ${unable.join(" and ")}`);
    return unable;
  }
  return requireTools(suite, [...(registry ? REAL_GUEST_NEEDS : OFFLINE_GUEST_NEEDS), ...extra]);
}

export interface GuestEnv {
  readonly ns: NetNs;
  readonly cluster: Cluster;
  readonly registry: RegistryProcess;
  /** A scratch directory the owner can read (the kernel package lives in `kernel-pkg`). */
  readonly work: string;
  /** Runs a CLI command, prints its time, and expects `expectCode` (0 by default). */
  cli(args: string[], expectCode?: number): Promise<CliResult>;
  /** Runs a command inside the namespace (where the bridge and the guests are). */
  inNs(command: string, ...args: string[]): string;
  /** What of this cluster is left on the host: VMM processes, VM taps, NAT rules, loop devices, VM files. */
  leftovers(): Leftovers;
  /** Imports the kernel package and builds banger's initramfs (with the guest kit) for it, as `debian`. */
  importKernel(): Promise<void>;
  shutdown(): Promise<void>;
}

/** What of a banger whose directories are `runtimeDir` and `stateDir` is left on the host and in `ns`. */
export function leftoversOf(ns: NetNs, runtimeDir: string, stateDir: string): Leftovers {
  return {
    qemu: spawnSync("pgrep", ["-f", `qemu-system-x86_64.*${runtimeDir}/`], { encoding: "utf8" })
      .stdout.split("\n")
      .filter((l) => l !== ""),
    taps: ns
      .links()
      .filter((l) => l.ifname.startsWith("bgr-") && !l.ifname.startsWith("bgr-p"))
      .map((l) => l.ifname),
    nat: ns
      .ruleset()
      .split("\n")
      .filter((line) => line.includes("masquerade")),
    loops: execFileSync("losetup", ["-l", "-n", "-O", "NAME,BACK-FILE"], { encoding: "utf8" })
      .split("\n")
      .filter((line) => line.includes(stateDir)),
    vmFiles: existsSync(join(stateDir, "vms")) ? readdirSync(join(stateDir, "vms")) : [],
  };
}

export interface Leftovers {
  readonly qemu: string[];
  readonly taps: string[];
  readonly nat: string[];
  readonly loops: string[];
  readonly vmFiles: string[];
}
export const NOTHING: Leftovers = { qemu: [], taps: [], nat: [], loops: [], vmFiles: [] };

/**
 * Starts the namespace, the registry and the services. `prepare` runs once the registry is up and
 * before the services start (to build and push images); the scratch directory is handed to the owner
 * after it.
 */
export async function startGuestEnv(
  prepare: (registry: RegistryProcess, work: string) => Promise<void> | void = () => undefined,
): Promise<GuestEnv> {
  const work = mkdtempSync(join(tmpdir(), "banger-e2e-"));
  const ns = createNetNs();
  let registry: RegistryProcess | undefined;
  let cluster: Cluster;
  try {
    registry = await startRegistry(join(work, "registry"));
    await prepare(registry, work);
    const t = Date.now();
    const modules = await writeKernelPackage(KERNEL_VERSION ?? "", join(work, "kernel-pkg"));
    execFileSync("chown", ["-R", `${OWNER}:${OWNER}`, work]);
    console.log(`e2e: kernel layout (${modules} modules) in ${((Date.now() - t) / 1000).toFixed(1)} s`);
    cluster = await startCluster(guestClusterOptions(ns));
  } catch (error) {
    await registry?.stop();
    ns.remove();
    rmSync(work, { recursive: true, force: true });
    throw error;
  }
  return guestEnv(ns, cluster, registry, work);
}

/** Builds the suites' small busybox guest image (support/guest-image.mjs) and pushes it as banger/guest:1. */
export function pushGuestImage(registry: RegistryProcess, work: string): void {
  execFileSync(process.execPath, [
    join(ROOT, "test/e2e/support/guest-image.mjs"),
    ...["--out", join(work, "guest"), "--tag", "1", "--push", `${registry.host}/banger/guest:1`],
  ]);
}

/**
 * startGuestEnv with that image pushed and pulled as `guest`, and the host's kernel imported with its
 * initramfs: what a suite of one small real guest needs before its first `vm create --image guest`.
 */
export async function startGuestEnvWithImage(): Promise<GuestEnv> {
  const env = await startGuestEnv(pushGuestImage);
  await env.cli(["image", "pull", `${env.registry.host}/banger/guest:1`, "--name", "guest"]);
  await env.importKernel();
  return env;
}

/** The services as an installed banger runs them, the helper and the orchestrator in the namespace. */
const guestClusterOptions = (ns: NetNs): ClusterOptions => ({
  owner: OWNER,
  netns: ns.name,
  orchestratorInNetns: true,
  // Port 53 on the bridge's address bound as root and passed to the owner's orchestrator, as
  // bangerd-dns.socket does (the owner cannot bind it).
  orchestratorDnsSockets: "172.30.0.1",
  // The helper as its unit runs it: QEMU (a TCG JIT) inherits its refusal of writable-executable memory.
  helperUnitSandbox: true,
  configToml: TCG_GUEST_CONFIG,
});

function guestEnv(ns: NetNs, cluster: Cluster, registry: RegistryProcess, work: string): GuestEnv {
  const cli = async (args: string[], expectCode = 0) => {
    const t = Date.now();
    const result = await cluster.cli(args);
    console.log(`e2e: banger ${args.join(" ")} -> ${result.code} in ${((Date.now() - t) / 1000).toFixed(1)} s`);
    expect(result.code, `${args.join(" ")}\n${result.stderr}`).toBe(expectCode);
    return result;
  };
  const vmmPattern = `qemu-system-x86_64.*${cluster.runtimeDir}/`;
  return {
    ns,
    cluster,
    registry,
    work,
    cli,
    inNs: (command, ...args) => execFileSync("ip", ["netns", "exec", ns.name, command, ...args], { encoding: "utf8" }),
    leftovers: () => leftoversOf(ns, cluster.runtimeDir, cluster.stateDir),
    importKernel: async () => {
      await cli(["kernel", "import", "debian", join(work, "kernel-pkg")]);
      await cli(["kernel", "initramfs", "debian"]);
    },
    shutdown: async () => {
      spawnSync("pkill", ["-9", "-f", vmmPattern]);
      await cluster.shutdown();
      await registry.stop();
      ns.remove();
      rmSync(work, { recursive: true, force: true });
    },
  };
}

/** `banger vm ssh` hands over to the system ssh: run it where the guest network is (the namespace). */
export function sshInNs(env: GuestEnv, vm: string, ...command: string[]): string {
  return execFileSync(
    "ip",
    ["netns", "exec", env.ns.name, join(ROOT, "bin/banger"), "vm", "ssh", vm, "--", ...command],
    { encoding: "utf8", env: { ...process.env, BANGER_RUNTIME_DIR: env.cluster.runtimeDir, BANGER_SOCKET: "" } },
  );
}

/**
 * A git repository in the owner's home (the services' HOME is the cluster's directory) for workspace
 * tests: README and .gitignore committed, `build/` ignored, `notes.txt` untracked. Returns its path.
 */
export function makeRepository(env: GuestEnv, name: string): string {
  const repo = join(env.cluster.dir, name);
  mkdirSync(repo);
  writeFileSync(join(repo, "README"), "hello\n");
  writeFileSync(join(repo, ".gitignore"), "build/\n");
  mkdirSync(join(repo, "build"));
  writeFileSync(join(repo, "build", "junk"), "ignored\n");
  writeFileSync(join(repo, "notes.txt"), "untracked, not ignored\n");
  const git = (...args: string[]) =>
    execFileSync("git", ["-c", "user.name=E2E", "-c", "user.email=e2e@example.org", "-C", repo, ...args]);
  git("init", "-q");
  git("add", "README", ".gitignore");
  git("commit", "-q", "-m", "first");
  execFileSync("chown", ["-R", `${OWNER}:${OWNER}`, repo]);
  return repo;
}
