/** A throwaway network namespace for tests that change links and nftables for real. */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { createUnixTransport, type UnixTransport } from "@banger/common";
import { HostService } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { createClient } from "@connectrpc/connect";
import { ROOT, waitUntil } from "./harness.js";

export const IS_ROOT = process.getuid?.() === 0;

/** What a namespace and the helper in it run: links and addresses, the ruleset. */
export const NETNS_TOOLS = ["ip", "nft"];

/** What the helper runs for a VMM: its log relays (busybox), and kill to signal it as the owner. */
export const VMM_TOOLS = ["/bin/busybox", "kill"];

export interface NetNs {
  readonly name: string;
  /** Runs a command inside the namespace and returns its stdout. */
  exec(argv: readonly string[]): string;
  links(): {
    ifname: string;
    ifalias?: string;
    master?: string;
    linkinfo?: { info_kind?: string; info_data?: { user?: number } };
  }[];
  ruleset(): string;
  remove(): void;
}

export function createNetNs(): NetNs {
  const name = `bgrt-${randomBytes(4).toString("hex")}`;
  execFileSync("ip", ["netns", "add", name]);
  const exec = (argv: readonly string[]) => execFileSync("ip", ["netns", "exec", name, ...argv], { encoding: "utf8" });
  exec(["ip", "link", "set", "lo", "up"]);
  return {
    name,
    exec,
    links: () => JSON.parse(exec(["ip", "-j", "-d", "link", "show"])) as ReturnType<NetNs["links"]>,
    ruleset: () => exec(["nft", "list", "ruleset"]),
    remove: () => execFileSync("ip", ["netns", "del", name]),
  };
}

/** The privileged helper running inside a namespace, driven as its owner. */
export interface HelperInNs {
  readonly child: ChildProcess;
  readonly logs: Record<string, unknown>[];
  readonly socket: string;
  readonly transport: UnixTransport;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Starts the helper inside `ns` with `owner` as its owner and connects to it as
 * that owner (SO_PEERCRED records the effective ids at connect time), so the
 * test process can go on as root to inspect the namespace.
 */
export async function startHelperInNs(
  ns: NetNs,
  runtimeDir: string,
  stateDir: string,
  owner: number,
  extraArgs: readonly string[] = [],
  /** Run it as its unit does: root without CAP_DAC_OVERRIDE (nor DAC_READ_SEARCH, FOWNER), the owner's group added. */
  asUnit = false,
): Promise<HelperInNs> {
  const entry = join(ROOT, "services/privileged/dist/bundle/main.js");
  const ids = ["--owner-uid", String(owner), "--owner-gid", String(owner), ...extraArgs];
  const unit = asUnit
    ? ["setpriv", `--groups=${owner}`, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    : [];
  const child = spawn(
    "ip",
    [
      "netns",
      "exec",
      ns.name,
      ...unit,
      process.execPath,
      entry,
      "--runtime-dir",
      runtimeDir,
      "--state-dir",
      stateDir,
      ...ids,
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  const logs: Record<string, unknown>[] = [];
  let buffered = "";
  child.stdout?.on("data", (c: Buffer) => {
    buffered += c.toString();
    const lines = buffered.split("\n");
    buffered = lines.pop() ?? "";
    for (const l of lines) if (l) logs.push(JSON.parse(l) as Record<string, unknown>);
  });
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  await waitUntil(() => logs.some((l) => l["msg"] === "listening"), undefined, "helper to listen");
  const socket = join(runtimeDir, "privileged.sock");
  const transport = createUnixTransport(socket, { peer: "privileged helper" });
  process.setegid?.(owner);
  process.seteuid?.(owner);
  try {
    await createClient(HostService, transport.transport).getVersion({});
  } finally {
    process.seteuid?.(0);
    process.setegid?.(0);
  }
  return {
    child,
    logs,
    socket,
    transport,
    stop: async (signal = "SIGTERM") => {
      transport.close();
      child.kill(signal);
      await exited;
    },
  };
}
