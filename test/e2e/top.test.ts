/**
 * `banger top` against one real guest (qemu-microvm under TCG, as real-guests.test.ts): tmux runs it at
 * 80×24, the row shows the guest running with its agent answering, the bars and the row agree with
 * `vm stats`, `e` with no command opens a shell in the guest on a pseudo-terminal, and a stop from the
 * screen stops the guest.
 */
import { spawnSync } from "node:child_process";
import { availableParallelism } from "node:os";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { size } from "../../clients/cli/src/render/top-view.js";
import { BANGER, waitUntil } from "../integration/harness.js";
import { guestSuiteMissing, startGuestEnvWithImage, type GuestEnv } from "./support/guest-env.js";

const missing = guestSuiteMissing("banger top on a real guest", ["tmux"]);
const e2e = describe.skipIf(missing.length > 0);

let env: GuestEnv;
const TMUX = ["-L", `banger-top-e2e-${process.pid}`];
const tmux = (...args: string[]) => {
  const result = spawnSync("tmux", [...TMUX, ...args], { encoding: "utf8" });
  if (result.status !== 0) throw new Error(`tmux ${args.join(" ")}: ${result.stderr}`);
  return result.stdout;
};
const screen = () => tmux("capture-pane", "-p", "-t", "top");

async function screenShows(pattern: RegExp, what: string, timeoutMs = 120_000): Promise<string> {
  let last = "";
  try {
    await waitUntil(() => pattern.test((last = screen())), undefined, what, timeoutMs);
  } catch (error) {
    throw new Error(`${String(error)}\nlast screen:\n${last}`);
  }
  return last;
}

beforeAll(async () => {
  if (missing.length > 0) return;
  env = await startGuestEnvWithImage();
  await env.cli(["vm", "create", "--name", "watched", "--image", "guest", "--vcpu", "1", "--ssh-timeout", "240"]);
}, 900_000);

afterAll(async () => {
  if (missing.length > 0) return;
  spawnSync("tmux", [...TMUX, "kill-server"]);
  await env?.shutdown();
});

e2e("banger top on a real guest", () => {
  it("shows the guest running with its agent, bars and row consistent with vm stats; x stops it", async () => {
    // CI=true as CI runners set it: the screen must draw there too.
    const vars = `BANGER_RUNTIME_DIR='${env.cluster.runtimeDir}' BANGER_SOCKET='' CI=true`;
    tmux("new-session", "-d", "-s", "top", "-x", "80", "-y", "24", `trap '' INT; env ${vars} ${BANGER} top; sleep 600`);
    await screenShows(/^watched +running +ok +172\./m, "the guest running, its agent ok");
    await screenShows(new RegExp(`^CPU +\\[#*-*\\] +\\d+%  1/${availableParallelism()} vCPU`, "m"), "CPU bar");

    const stats = await env.cli(["vm", "stats", "watched", "--json"]);
    const measured = JSON.parse(stats.stdout) as { rootDiskUsedBytes?: string; workDiskUsedBytes?: string };
    const disk = Number(measured.rootDiskUsedBytes ?? 0) + Number(measured.workDiskUsedBytes ?? 0);
    // The guest may write to its disks between the two reads: the row is refreshed until it agrees.
    await screenShows(new RegExp(`^watched .* ${size(disk).replace(".", "\\.")}$`, "m"), "the row's disk as vm stats");
    const row = screen()
      .split("\n")
      .find((l) => l.startsWith("watched "));
    const cells = row?.trim().split(/ +/) ?? [];
    expect(Number(cells.at(-3))).toBeGreaterThanOrEqual(0); // CPU %
    expect(cells.at(-2)).toMatch(/^\d+(\.\d)?[KMG]$/); // RSS

    // e with no command: a shell in the guest on a pseudo-terminal (vm exec -t), then back to the screen.
    tmux("send-keys", "-t", "top", "e");
    await screenShows(/exec in watched \(Enter runs; nothing: a shell; Esc cancels\): _/, "the exec prompt");
    tmux("send-keys", "-t", "top", "Enter");
    await new Promise((resolve) => setTimeout(resolve, 3_000)); // the shell starts in the guest
    tmux("send-keys", "-t", "top", "-l", "tty; echo shell-$((6*7))");
    tmux("send-keys", "-t", "top", "Enter");
    await screenShows(/^\/dev\/pts\/\d+\s*$[\s\S]*^shell-42/m, "the shell's answer on its own terminal");
    tmux("send-keys", "-t", "top", "-l", "exit");
    tmux("send-keys", "-t", "top", "Enter");
    await screenShows(/^watched +running +ok/m, "the screen back after the shell");

    tmux("send-keys", "-t", "top", "x");
    await screenShows(/^watched +stopped/m, "the guest stopped", 180_000);
    const shown = await env.cli(["vm", "show", "watched", "--json"]);
    expect((JSON.parse(shown.stdout) as { state: string }[])[0]?.state).toBe("VM_STATE_STOPPED");
    tmux("send-keys", "-t", "top", "q");
  }, 600_000);
});
