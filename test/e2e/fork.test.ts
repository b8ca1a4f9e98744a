/**
 * Forks of one real running guest (qemu-microvm under TCG, Debian's kernel
 * with banger's initramfs, the busybox + dropbear image of
 * support/guest-image.mjs): the source writes a file in /root and runs a
 * counter, `vm snapshot` takes it, and two `vm create --from` resume from the
 * snapshot's memory — no boot — each with the file and the same process
 * counting on, and each with an identity of its own (name, hostname, MAC, IP,
 * `.vm` name, SSH host key, random numbers). Deleting the source leaves the
 * forks running; a fork on a just-freed address announces itself to the host. Pause/resume and `vm stop --save` are pause.test.ts's.
 *
 * Prints the times of cold create → exec-able and fork → exec-able measured
 * in this run (issue 20's numbers; `npm run bench -- fork` has the medians).
 * One guest boots; the forks do not.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NOTHING, guestSuiteMissing, startGuestEnvWithImage, type GuestEnv } from "./support/guest-env.js";

const missing = guestSuiteMissing("the fork end-to-end suite", ["ssh-keyscan", "dig"]);
const e2e = describe.skipIf(missing.length > 0);

let env: GuestEnv;
const cli = (args: string[], expectCode = 0) => env.cli(args, expectCode);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** Every 200 ms the next number into /root/count. */
const COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /root/count; sleep 0.2; done";

const sh = async (vm: string, script: string) =>
  (await cli(["vm", "exec", vm, "--", "sh", "-c", script])).stdout.trim();
const count = async (vm: string) => Number(await sh(vm, "cat /root/count"));

/** Runs `vm exec VM -- true` until it exits 0; ms from `t0` to then. */
async function execAble(vm: string, t0: number): Promise<number> {
  for (let tries = 1; ; tries++) {
    const result = await env.cluster.cli(["vm", "exec", vm, "--", "true"]);
    if (result.code === 0) return Date.now() - t0;
    if (tries >= 120) throw new Error(`vm exec ${vm} -- true never succeeded: ${result.stderr}`);
    await sleep(250);
  }
}

interface Shown {
  readonly guestIp: string;
  readonly mac: string;
}
async function show(vm: string): Promise<Shown> {
  const [shown] = JSON.parse((await cli(["vm", "show", vm, "--json"])).stdout) as Shown[];
  if (!shown) throw new Error(`vm show ${vm} --json printed no VM`);
  return shown;
}

/** The ed25519 host key the guest at `ip` serves on port 22 (as `ssh-keyscan` sees it from the host). */
function servedHostKey(ip: string): string {
  const line = env.inNs("ssh-keyscan", "-T", "20", "-t", "ed25519", ip).trim();
  const key = /ssh-ed25519 (\S+)/.exec(line)?.[1];
  expect(key, `ssh-keyscan ${ip}: ${line}`).toBeDefined();
  return key ?? "";
}

beforeAll(async () => {
  if (missing.length > 0) return;
  env = await startGuestEnvWithImage();
}, 600_000);

afterAll(async () => {
  if (missing.length > 0) return;
  await env?.shutdown();
});

e2e("fork a real guest (qemu-microvm, TCG)", () => {
  it("two forks of a running guest's snapshot have its file and process and identities of their own; the source runs on, and its deletion leaves them running", async () => {
    const coldT0 = Date.now();
    await cli(["vm", "create", "--name", "src", "--image", "guest", "--ssh-timeout", "180"]);
    const coldMs = await execAble("src", coldT0);

    await sh("src", "echo kept > /root/marker && sync");
    const pid = await sh("src", `setsid sh -c '${COUNTER}' </dev/null >/dev/null 2>&1 & echo $!`);
    expect(pid).toMatch(/^\d+$/);
    await sleep(1_000);
    const beforeSnapshot = await count("src");
    expect(beforeSnapshot).toBeGreaterThan(0);
    await cli(["vm", "snapshot", "src", "--as", "s1"]);
    // Written after the snapshot: no fork sees it.
    await sh("src", "echo later > /root/after-snapshot && sync");

    const forks: { name: string; ms: number; stages: string }[] = [];
    for (const name of ["f1", "f2"]) {
      const t0 = Date.now();
      const created = await cli(["vm", "create", "--from", "s1", "--name", name, "--ssh-timeout", "180"]);
      forks.push({ name, ms: await execAble(name, t0), stages: created.stderr });
      // Resumed from the snapshot: the stages of a boot are not there.
      expect(created.stderr).not.toMatch(/\n {2}(configure-vmm|start-vmm)\s/);
      expect(created.stderr).toMatch(/\n {2}identity\s+done/);
    }
    const fastest = Math.min(...forks.map((f) => f.ms));
    console.log(
      `e2e: cold create → exec-able ${seconds(coldMs)}; fork → exec-able ` +
        `${forks.map((f) => `${seconds(f.ms)} (${f.name})`).join(", ")}; ` +
        `ratio ${(fastest / coldMs).toFixed(2)}x (goal ≤ 0.2x)`,
    );
    for (const fork of forks) console.log(`e2e: vm create --from s1 --name ${fork.name}:\n${fork.stages}`);

    // Both forks have the source's file and its process, counting on from where the snapshot took it;
    // not what the source wrote after.
    for (const name of ["f1", "f2"]) {
      expect(await sh(name, "cat /root/marker")).toBe("kept");
      expect(await sh(name, "test -e /root/after-snapshot && echo yes || echo no")).toBe("no");
      await cli(["vm", "exec", name, "--", "kill", "-0", pid]);
      const first = await count(name);
      expect(first).toBeGreaterThanOrEqual(beforeSnapshot);
      await sleep(2_000);
      expect(await count(name)).toBeGreaterThan(first);
    }
    // What one fork writes, the other does not see.
    await sh("f1", "echo mine > /root/only-f1 && sync");
    expect(await sh("f2", "test -e /root/only-f1 && echo yes || echo no")).toBe("no");

    // Identities of their own: address and MAC (as banger has them and as the guest's eth0 has them),
    // hostname, `.vm` name, SSH host key; and random numbers of their own.
    const vms: [string, Shown][] = [];
    for (const name of ["src", "f1", "f2"]) vms.push([name, await show(name)]);
    expect(new Set(vms.map(([, vm]) => vm.guestIp)).size).toBe(3);
    expect(new Set(vms.map(([, vm]) => vm.mac)).size).toBe(3);
    const keys = new Set<string>();
    const random = new Set<string>();
    for (const [name, vm] of vms) {
      expect(await sh(name, "hostname")).toBe(name);
      expect(await sh(name, "cat /etc/hostname")).toBe(name);
      expect(await sh(name, "cat /sys/class/net/eth0/address")).toBe(vm.mac);
      const addresses = await sh(name, "ip -4 -o addr show dev eth0");
      expect(addresses).toContain(` ${vm.guestIp}/`);
      for (const [, other] of vms) if (other !== vm) expect(addresses).not.toContain(` ${other.guestIp}/`);
      expect(env.inNs("dig", "+short", "+time=5", "+tries=3", "@172.30.0.1", `${name}.vm`).trim()).toBe(vm.guestIp);
      keys.add(servedHostKey(vm.guestIp));
      random.add(await sh(name, "head -c 32 /dev/urandom | md5sum"));
    }
    expect(keys.size).toBe(3);
    expect(random.size).toBe(3);
    // The clock is the host's, not the snapshot's.
    const skew = Math.abs(Number(await sh("f2", "date +%s")) - Date.now() / 1000);
    console.log(`e2e: f2's clock is ${skew.toFixed(0)} s off the host's`);
    expect(skew).toBeLessThan(15);
    // The forks reach each other by name, side by side on the bridge.
    await cli(["vm", "exec", "f1", "--", "ping", "-c", "1", "-W", "5", "f2.vm"]);
    await cli(["vm", "exec", "f2", "--", "ping", "-c", "1", "-W", "5", "f1.vm"]);

    // A fork on the address of a VM deleted a moment ago: the host's neighbour entry for it still names that
    // VM's MAC, and a fork's guest asks the host nothing (its ARP cache is its source's). The fork announces
    // itself when its link comes up, so the entry names its MAC at once (else connections to it would wait
    // for the entry to go stale: tens of seconds).
    const f1 = await show("f1");
    await cli(["vm", "exec", "f1", "--", "true"]);
    const neighbour = () => env.inNs("ip", "neigh", "show", f1.guestIp);
    expect(neighbour()).toContain(`lladdr ${f1.mac}`);
    await cli(["vm", "delete", "f1"]);
    await cli(["vm", "create", "--from", "s1", "--name", "f3", "--no-ssh-wait"]);
    const f3 = await show("f3");
    expect(f3.guestIp).toBe(f1.guestIp);
    // The announcement updates an entry that exists; where the host had already dropped it (a gratuitous ARP
    // creates none), there is none: either way it never names f1's MAC again.
    const announcedBy = Date.now() + 5_000;
    while (neighbour().includes(f1.mac) && Date.now() < announcedBy) await sleep(200);
    expect(neighbour()).not.toContain(f1.mac);
    await cli(["vm", "exec", "f3", "--", "kill", "-0", pid]);
    expect(neighbour()).toContain(`lladdr ${f3.mac}`);

    // The source ran on all along, with its own process.
    const sourceCount = await count("src");
    await sleep(1_000);
    expect(await count("src")).toBeGreaterThan(sourceCount);
    expect(await sh("src", "hostname")).toBe("src");

    // Without the source, the forks run on.
    await cli(["vm", "delete", "src"]);
    for (const name of ["f2", "f3"]) {
      await cli(["vm", "exec", name, "--", "kill", "-0", pid]);
      expect(await sh(name, "cat /root/marker")).toBe("kept");
    }

    await cli(["vm", "delete", "f2"]);
    await cli(["vm", "delete", "f3"]);
    await cli(["snapshot", "delete", "s1"]);
    expect(env.leftovers()).toEqual(NOTHING);
  }, 900_000);
});
