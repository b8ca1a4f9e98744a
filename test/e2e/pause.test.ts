/**
 * Pause and resume of one real guest (qemu-microvm under TCG, Debian's kernel
 * with banger's initramfs, the busybox + dropbear image of
 * support/guest-image.mjs): a process in the guest counts into a file in
 * /root and onto the console; while the VM is paused the console shows no new
 * count and exec says it is paused; once resumed the same process counts on;
 * after `vm stop --save` the next start resumes it (no boot) with that process
 * and its file.
 * One guest only: each TCG boot costs CI time.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NOTHING, guestSuiteMissing, startGuestEnvWithImage, type GuestEnv } from "./support/guest-env.js";

const missing = guestSuiteMissing("the pause end-to-end suite");
const e2e = describe.skipIf(missing.length > 0);

let env: GuestEnv;
const cli = (args: string[], expectCode = 0) => env.cli(args, expectCode);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The counter: every 200 ms the next number into /root/count and, as `tick N`, onto the console. */
const COUNTER = 'i=0; while :; do i=$((i+1)); echo $i > /root/count; echo "tick $i" > /dev/console; sleep 0.2; done';

/** The last `tick N` of the guest's console (0 when none yet). */
async function lastTick(): Promise<number> {
  const ticks = [...(await cli(["vm", "logs", "pz", "--tail", "50"])).stdout.matchAll(/tick (\d+)/g)];
  return Number(ticks.at(-1)?.[1] ?? 0);
}

const count = async () => Number((await cli(["vm", "exec", "pz", "--", "cat", "/root/count"])).stdout.trim());

beforeAll(async () => {
  if (missing.length > 0) return;
  env = await startGuestEnvWithImage();
}, 600_000);

afterAll(async () => {
  if (missing.length > 0) return;
  await env?.shutdown();
});

e2e("pause and resume a real guest (qemu-microvm, TCG)", () => {
  it("a paused guest runs nothing and says so to exec; resumed, and after stop --save and start, the same process counts on", async () => {
    await cli(["vm", "create", "--name", "pz", "--image", "guest", "--ssh-timeout", "180"]);
    const pid = (
      await cli([
        "vm",
        "exec",
        "pz",
        "--",
        "sh",
        "-c",
        `setsid sh -c '${COUNTER}' </dev/null >/dev/null 2>&1 & echo $!`,
      ])
    ).stdout.trim();
    expect(pid).toMatch(/^\d+$/);
    const deadline = Date.now() + 60_000;
    while ((await lastTick()) < 3 && Date.now() < deadline) await sleep(500);
    expect(await lastTick()).toBeGreaterThanOrEqual(3);

    const paused = await cli(["vm", "pause", "pz"]);
    expect(paused.stdout).toMatch(/^pz\s+paused\s/m);
    const exec = await cli(["vm", "exec", "pz", "--", "true"], 1);
    expect(exec.stderr).toContain("VM pz is paused: resume it with 'banger vm resume pz'");
    // What the guest wrote before the pause has reached the console log by now; then nothing more comes.
    await sleep(1_000);
    const atPause = await lastTick();
    await sleep(3_000);
    expect(await lastTick()).toBe(atPause);

    await cli(["vm", "resume", "pz"]);
    const resumedBy = Date.now() + 60_000;
    while ((await lastTick()) <= atPause + 2 && Date.now() < resumedBy) await sleep(500);
    expect(await lastTick()).toBeGreaterThan(atPause + 2);
    expect(await count()).toBeGreaterThan(atPause);
    // The same process, still counting.
    await cli(["vm", "exec", "pz", "--", "kill", "-0", pid]);

    // Suspend to disk: the next start resumes the guest from its saved memory (stage resume-vmm, no boot), with
    // the same process still counting on into the same file.
    const beforeSave = await count();
    const saved = await cli(["vm", "stop", "pz", "--save"]);
    expect(saved.stderr).toMatch(/\n  save-state\s+done/);
    const resumedStart = await cli(["vm", "start", "pz", "--ssh-timeout", "180"]);
    expect(resumedStart.stderr).toMatch(/\n  resume-vmm\s+done \([\d.]+ s\): resumed from the state saved at /);
    expect(resumedStart.stderr).not.toMatch(/configure-vmm|start-vmm/);
    await cli(["vm", "exec", "pz", "--", "kill", "-0", pid]);
    expect(await count()).toBeGreaterThan(beforeSave);

    // A stop of a paused VM resumes it and shuts it down.
    await cli(["vm", "pause", "pz"]);
    await cli(["vm", "stop", "pz"]);
    await cli(["vm", "delete", "pz"]);
    expect(env.leftovers()).toEqual(NOTHING);
  }, 600_000);
});
