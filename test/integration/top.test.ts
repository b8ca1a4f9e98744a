/**
 * `banger top` in a real terminal: tmux runs it at 80×24 against the three services and fake-VMM VMs
 * (fake-vm-cluster.ts), `send-keys` drives it and `capture-pane` reads the screen.
 */
import { spawnSync } from "node:child_process";
import { availableParallelism, totalmem } from "node:os";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { size } from "../../clients/cli/src/render/top-view.js";
import { FAKE_VM_TOOLS, startFakeVmCluster } from "./fake-vm-cluster.js";
import { BANGER, OWNER_CAN_READ_CHECKOUT, waitUntil, type Cluster } from "./harness.js";
import { IS_ROOT } from "./netns.js";

const RUNS =
  IS_ROOT &&
  OWNER_CAN_READ_CHECKOUT &&
  requireTools("banger top in tmux on fake VMMs", [...FAKE_VM_TOOLS, "tmux"]).length === 0;
const live = describe.skipIf(!RUNS);

let cluster: Cluster;
let shutdown: () => Promise<void>;
/** The tmux server of this file alone (-L), so that nothing else's sessions are touched. */
const TMUX = ["-L", `banger-top-test-${process.pid}`];
const tmux = (...args: string[]) => {
  const result = spawnSync("tmux", [...TMUX, ...args], { encoding: "utf8" });
  if (result.status !== 0) throw new Error(`tmux ${args.join(" ")}: ${result.stderr}`);
  return result.stdout;
};
const screen = () => tmux("capture-pane", "-p", "-t", "top");
const keys = (...k: string[]) => tmux("send-keys", "-t", "top", ...k);

/** Waits until the screen matches; fails showing the last screen. */
async function screenShows(pattern: RegExp, what: string, timeoutMs = 60_000): Promise<string> {
  let last = "";
  try {
    await waitUntil(() => pattern.test((last = screen())), undefined, what, timeoutMs);
  } catch (error) {
    throw new Error(`${String(error)}\nlast screen:\n${last}`);
  }
  return last;
}

/** Waits until `condition` (asked every half second: each ask runs the CLI); fails showing the screen. */
async function until(condition: () => Promise<boolean>, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}; last screen:\n${screen()}`);
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** Starts `banger top` (with `env`) in an 80×24 tmux session; when it ends, the pane says how. */
function startTop(env: Record<string, string> = {}) {
  spawnSync("tmux", [...TMUX, "kill-session", "-t", "top"]);
  // CI=true as CI runners set it: the screen must draw there too (ink alone would wait for its exit).
  const vars = Object.entries({ BANGER_RUNTIME_DIR: cluster.runtimeDir, BANGER_SOCKET: "", CI: "true", ...env })
    .map(([k, v]) => `${k}='${v}'`)
    .join(" ");
  tmux(
    "new-session",
    "-d",
    "-s",
    "top",
    "-x",
    "80",
    "-y",
    "24",
    // The pane's shell ignores Ctrl-C as a login shell would (it has no job control here: Ctrl-C for
    // `logs -f` would end it with the pane).
    `trap '' INT; env ${vars} ${BANGER} top --interval 2; echo "top exited $?"; sleep 600`,
  );
}

interface VmJson {
  name: string;
  state: string;
  vcpu: number;
}
const show = async (name: string) => {
  const result = await cluster.cli(["vm", "show", name, "--json"]);
  return result.code === 0 ? ((JSON.parse(result.stdout) as VmJson[])[0] as VmJson) : undefined;
};

beforeAll(async () => {
  if (!RUNS) return;
  const started = await startFakeVmCluster();
  cluster = started.cluster;
  shutdown = started.shutdown;
  for (const [name, vcpu] of [
    ["alpha", "2"],
    ["beta", "1"],
  ] as const) {
    const created = await cluster.cli([
      "vm",
      "create",
      "--name",
      name,
      "--image",
      "tiny",
      "--vcpu",
      vcpu,
      "--no-ssh-wait",
    ]);
    if (created.code !== 0) throw new Error(`vm create ${name}: ${created.stderr}`);
  }
}, 240_000);

afterAll(async () => {
  if (!RUNS) return;
  spawnSync("tmux", [...TMUX, "kill-server"]);
  await shutdown();
});

live("banger top in tmux", () => {
  it("shows the VMs and bars consistent with vm stats and the host; stops a VM, asks before deleting", async () => {
    startTop();
    const first = await screenShows(/alpha +starting[\s\S]*beta +starting/, "both VMs on the screen");
    // The whole screen fits 80×24, the title on the first line and the keys on the last.
    const lines = first.replace(/\n$/, "").split("\n");
    expect(lines).toHaveLength(24);
    expect(lines[0]).toMatch(/^banger top — 2 VMs, refresh 2s/);
    expect(lines[23]).toMatch(/q quit$/);
    for (const line of lines) expect(line.length).toBeLessThanOrEqual(80);

    // No guest runs in a fake VM: created with --no-ssh-wait, they stay "starting" (the VMM runs, SSH never
    // answers) and reserve their vCPUs and memory like running ones.
    // The bars: the VMs' 2 + 1 vCPUs and 2 × the default memory against the host's.
    const list = JSON.parse((await cluster.cli(["vm", "list", "--json"])).stdout) as { memoryMib: number }[];
    const memory = list.reduce((sum, vm) => sum + vm.memoryMib * 1024 * 1024, 0);
    expect(first).toMatch(new RegExp(`^CPU +\\[#*-*\\] +\\d+%  3/${availableParallelism()} vCPU`, "m"));
    expect(first).toMatch(new RegExp(`^RAM +\\[#*-*\\] +\\d+%  ${size(memory)}/${size(totalmem())}`, "m"));
    expect(first).toMatch(/^DISK +\[#*-*\] +\d+%  \S+\/\S+ \(fs \S+ used\)/m);

    // Each row's DISK is what `vm stats` measures of its disk files; CPU% and RSS are there.
    let allocated = 0;
    for (const name of ["alpha", "beta"]) {
      const stats = await cluster.cli(["vm", "stats", name, "--json"]);
      expect(stats.code, stats.stderr).toBe(0);
      const measured = JSON.parse(stats.stdout) as { rootDiskUsedBytes?: string; workDiskUsedBytes?: string };
      const disk = Number(measured.rootDiskUsedBytes ?? 0) + Number(measured.workDiskUsedBytes ?? 0);
      allocated += disk;
      const row = screen()
        .split("\n")
        .find((l) => l.startsWith(`${name} `));
      expect(row, screen()).toMatch(/starting +none +172\./);
      const cells = row?.trim().split(/ +/) ?? [];
      expect(cells.at(-1)).toBe(size(disk));
      expect(cells.at(-3)).toMatch(/^\d+\.\d$/); // CPU %
    }
    // The DISK bar's bytes are the rows' sum.
    expect(screen()).toMatch(new RegExp(`^DISK +\\[#*-*\\] +\\d+%  ${size(allocated)}/`, "m"));

    // Select beta (the second row) and stop it from the screen.
    keys("j");
    keys("x");
    await screenShows(/stopping beta \(op-[0-9a-f]{12}\)/, "the stop's operation on the status line");
    await until(async () => (await show("beta"))?.state === "VM_STATE_STOPPED", "beta stopped");
    await screenShows(/beta +stopped/, "beta stopped on the screen");
    await screenShows(/op-[0-9a-f]{12} stop +beta +succeeded/, "the stop among the operations");
    // Stopped: the CPU bar counts only alpha's 2 vCPUs.
    await screenShows(new RegExp(`^CPU +\\[#*-*\\] +\\d+%  2/${availableParallelism()} vCPU`, "m"), "CPU bar at 2");

    // Delete asks first; n keeps the VM.
    keys("k");
    keys("d");
    await screenShows(/delete alpha and its disks\? y\/n/, "the question");
    keys("n");
    await screenShows(/kept alpha/, "the answer");
    expect((await show("alpha"))?.state).toBe("VM_STATE_STARTING");

    // y deletes (beta, selected again).
    keys("j");
    keys("d");
    await screenShows(/delete beta and its disks\? y\/n/, "the question for beta");
    keys("y");
    await until(async () => (await show("beta")) === undefined, "beta deleted");
    await screenShows(/^(?![\s\S]*\nbeta )[\s\S]*alpha +starting/, "beta gone from the table");

    // Exec asks for a command, leaves the screen for `vm exec`, and waits for Enter so that its output can
    // be read (here its error: a fake VM has no guest to run it in).
    keys("e");
    await screenShows(/exec in alpha \(Enter runs; nothing: a shell; Esc cancels\): _/, "the exec prompt");
    keys("-l", "echo hello");
    await screenShows(/exec in alpha \(Enter runs; nothing: a shell; Esc cancels\): echo hello_/, "the command typed");
    keys("Enter");
    await screenShows(/\[exit \d+\] press Enter to go back to banger top/, "exec's end");
    keys("Enter");
    await screenShows(/NAME +STATE[\s\S]*alpha +starting/, "the table back after exec");

    // Logs leave the screen for `vm logs -f`; Ctrl-C ends them and the screen comes back.
    keys("l");
    await screenShows(/^(?![\s\S]*NAME +STATE)/, "the table gone while logs run", 30_000);
    await screenShows(/fake-vmm: console of/, "the logs", 30_000);
    keys("C-c");
    await screenShows(/NAME +STATE[\s\S]*alpha +starting/, "the table back after the logs");

    // A Ctrl-C right behind the key, while the screen leaves: it was meant for the command, which then does not
    // run (it once reached neither, and the logs ran on); the table comes back and stays.
    keys("l", "C-c");
    await screenShows(/NAME +STATE[\s\S]*alpha +starting/, "the table back after l and Ctrl-C at once");
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(screen()).toMatch(/NAME +STATE[\s\S]*alpha +starting/);
    expect(screen()).not.toMatch(/fake-vmm: console of/);

    keys("q");
    await screenShows(/top exited 0/, "top to quit with 0");
    tmux("kill-session", "-t", "top");
  }, 400_000);

  it("prints a plain snapshot and exits 0 with TERM=dumb, and when stdout is not a terminal", async () => {
    startTop({ TERM: "dumb" });
    const dumb = await screenShows(/top exited \d+/, "the snapshot");
    tmux("kill-session", "-t", "top");
    expect(dumb).toMatch(/top exited 0/);
    expect(dumb).toMatch(/^CPU +\[/m);
    expect(dumb).toMatch(/^NAME +STATE +HEALTH +IP +VCPU +MEM +CPU% +RSS +DISK$/m);
    expect(dumb).toMatch(/^alpha +starting/m);
    expect(dumb).not.toContain("\x1b");

    const piped = await cluster.cli(["top"]);
    expect(piped.code, piped.stderr).toBe(0);
    expect(piped.stdout).toMatch(/^CPU +\[#*-*\] +\d+%  \d+\/\d+ vCPU$/m);
    expect(piped.stdout).toMatch(/^RAM +\[/m);
    expect(piped.stdout).toMatch(/^DISK +\[/m);
    expect(piped.stdout).toMatch(/^alpha +starting +none +172\./m);
    expect(piped.stdout).toMatch(/^OPERATIONS$/m);
    expect(piped.stdout).not.toContain("\x1b");
  }, 120_000);

  it("--help tells what it shows, its keys and the snapshot", async () => {
    const help = await cluster.cli(["top", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--interval <seconds>/);
    expect(help.stdout).toMatch(/TERM=dumb/);
    expect(help.stdout).toMatch(/d delete \(asks y\/n\)/);
    const bad = await cluster.cli(["top", "--interval", "0"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--interval must be 1-3600 seconds, got 0/);
  });
});
