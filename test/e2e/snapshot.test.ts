/**
 * A snapshot of one real running guest (qemu-microvm under TCG, Debian's
 * kernel with banger's initramfs, the busybox + dropbear image of
 * support/guest-image.mjs): `vm snapshot` pauses it, copies its disks, has
 * QEMU migrate its state into the snapshot's directory, and resumes it; the
 * files are there, the guest answers exec after and its process counts on;
 * snapshot delete removes the files.
 * One guest only: each TCG boot costs CI time.
 */
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NOTHING, guestSuiteMissing, startGuestEnvWithImage, type GuestEnv } from "./support/guest-env.js";

const missing = guestSuiteMissing("the snapshot end-to-end suite");
const e2e = describe.skipIf(missing.length > 0);

let env: GuestEnv;
const cli = (args: string[], expectCode = 0) => env.cli(args, expectCode);

/** Every 200 ms the next number into /root/count. */
const COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /root/count; sleep 0.2; done";

const count = async () => Number((await cli(["vm", "exec", "sn", "--", "cat", "/root/count"])).stdout.trim());

beforeAll(async () => {
  if (missing.length > 0) return;
  env = await startGuestEnvWithImage();
}, 600_000);

afterAll(async () => {
  if (missing.length > 0) return;
  await env?.shutdown();
});

e2e("snapshot a real guest (qemu-microvm, TCG)", () => {
  it("vm snapshot writes the migration stream and the disks, and the guest runs on and answers exec", async () => {
    await cli(["vm", "create", "--name", "sn", "--image", "guest", "--ssh-timeout", "180"]);
    await cli(["vm", "exec", "sn", "--", "sh", "-c", `setsid sh -c '${COUNTER}' </dev/null >/dev/null 2>&1 &`]);
    await cli(["vm", "exec", "sn", "--", "sh", "-c", "echo kept > /root/marker && sync"]);

    const taken = await cli(["vm", "snapshot", "sn", "--as", "sn-1", "--json"]);
    for (const stage of ["freeze", "pause", "copy-disks", "save-state", "record", "resume"]) {
      expect(taken.stderr).toMatch(new RegExp(`\\n  ${stage}\\s+done`));
    }
    // The kit's qemu-ga freezes the guest's file systems, or the stage says why it was skipped.
    const freeze = /\n  freeze\s+done \([\d.]+ s\): (.*)\n/.exec(taken.stderr)?.[1] ?? "";
    console.log(`e2e: snapshot stage freeze: ${freeze}`);
    expect(freeze).toMatch(/^(\d+ file systems? frozen|skipped: .+)$/);
    const dir = join(env.cluster.stateDir, "snapshots", "sn-1");
    const files = readdirSync(dir).sort();
    expect(files).toEqual(expect.arrayContaining(["migration", "snapshot.json", "work.ext4"]));
    expect(files.some((f) => f === "root.ext4" || f === "root.cow")).toBe(true);
    expect(statSync(join(dir, "migration")).size).toBeGreaterThan(0);
    const [snapshot] = JSON.parse(taken.stdout) as { name: string; vmName: string; vmm: string }[];
    expect(snapshot).toMatchObject({ name: "sn-1", vmName: "sn", vmm: "qemu-microvm" });

    // The guest runs on: it answers exec, its file is there, and its process counts on.
    expect((await cli(["vm", "exec", "sn", "--", "cat", "/root/marker"])).stdout.trim()).toBe("kept");
    const first = await count();
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(await count()).toBeGreaterThan(first);

    await cli(["snapshot", "delete", "sn-1"]);
    expect(existsSync(dir)).toBe(false);
    await cli(["vm", "delete", "sn"]);
    expect(env.leftovers()).toEqual(NOTHING);
  }, 600_000);
});
