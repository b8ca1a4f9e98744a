/**
 * End to end with real Linux guests: the three real services and the CLI,
 * the qemu-microvm driver under TCG (no KVM, no Firecracker here), Debian's
 * kernel (linux-image-amd64) with banger's initramfs, and a busybox +
 * dropbear image built by test/e2e/support/guest-image.mjs, pushed to a real
 * registry on 127.0.0.1 and pulled through the image puller. The helper and
 * the orchestrator run in a throwaway network namespace (bridge, taps, NAT,
 * and the `.vm` DNS responder on the bridge address, as on a host).
 *
 * Each step prints its wall time. Nothing is faked.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MDWE_WRAPPER, ROOT } from "../integration/harness.js";
import {
  NOTHING,
  guestSuiteMissing,
  makeRepository,
  sshInNs,
  startGuestEnv,
  type GuestEnv,
} from "./support/guest-env.js";
import { KERNEL_VERSION } from "./support/kernel-package.js";

const kernelVersion = KERNEL_VERSION;
const missing = guestSuiteMissing("the end-to-end suite");
if (!MDWE_WRAPPER) console.warn("no PR_SET_MDWE here: the helper and its VMMs run without the W^X refusal of its unit");
const e2e = describe.skipIf(missing.length > 0);

let env: GuestEnv;
/** The dropbear host key the "guest" image carries, relative to the root. */
const HOST_KEY = "etc/dropbear/dropbear_ed25519_host_key";
/** sha256 of VM one's host key file. */
let oneHostKey = "";
const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");
const started = Date.now();
const cli = (args: string[], expectCode = 0) => env.cli(args, expectCode);
const leftovers = () => env.leftovers();

beforeAll(async () => {
  if (missing.length > 0) return;
  env = await startGuestEnv((registry, work) => {
    const t = Date.now();
    // Two images: without an init of its own (banger's minimal init runs it) and with a host key baked in,
    // and with busybox init.
    for (const [name, extra] of [
      ["guest", ["--with-host-key"]],
      ["guest-init", ["--with-init"]],
      ["guest-broken", ["--broken-init"]],
      // A static busybox alone: no SSH server, no init, no libc (banger's guest kit makes it reachable).
      ["guest-bare", ["--without-ssh"]],
    ] as const) {
      execFileSync(process.execPath, [
        join(ROOT, "test/e2e/support/guest-image.mjs"),
        ...["--out", join(work, name), "--tag", "1", "--push", `${registry.host}/banger/${name}:1`],
        ...extra,
      ]);
    }
    console.log(`e2e: guest images built and pushed in ${((Date.now() - t) / 1000).toFixed(1)} s`);
  });
}, 300_000);

afterAll(async () => {
  if (missing.length > 0) return;
  await env?.shutdown();
  console.log(`e2e: whole suite ${((Date.now() - started) / 1000).toFixed(1)} s`);
});

e2e("real guests through banger (qemu-microvm, TCG)", () => {
  it("pulls the image, imports the kernel and builds its initramfs", async () => {
    await cli(["image", "pull", `${env.registry.host}/banger/guest:1`, "--name", "guest"]);
    await cli(["image", "pull", `${env.registry.host}/banger/guest-init:1`, "--name", "guest-init"]);
    await cli(["image", "pull", `${env.registry.host}/banger/guest-broken:1`, "--name", "guest-broken"]);
    await cli(["image", "pull", `${env.registry.host}/banger/guest-bare:1`, "--name", "guest-bare"]);
    await env.importKernel();
  }, 300_000);

  it("a guest whose init exits fails the create at once, with its console's end and the cause; nothing is left", async () => {
    const result = await cli(["vm", "create", "--name", "broken", "--image", "guest-broken"], 1);
    console.log(`e2e: the failed create said:\n${result.stderr.slice(result.stderr.indexOf("the VM's last output"))}`);
    // The kernel panics when PID 1 exits, reboots (panic=1) and QEMU exits: the wait ends with it.
    // The console's end (a panic's call trace may push its first line out of the 20 kept).
    expect(result.stderr).toMatch(/\nthe VM's last output \(console and VMM log\):\n(  console: .*\n){20}/);
    expect(result.stderr).toMatch(
      /banger: failed at wait-(agent|ssh): the VMM exited before the guest was ready \(the guest rebooted or powered off\): the image's init exited .*\(op-[0-9a-f]{12}\)\n$/,
    );
    const op = /\((op-[0-9a-f]{12})\)\n$/.exec(result.stderr)?.[1] ?? "";
    const shown = await cli(["op", "show", op]);
    expect(shown.stdout).toMatch(/error: .*the image's init exited .*\(VMM_EXITED\)\nthe VM's last output/);
    expect(leftovers()).toEqual(NOTHING);
  }, 120_000);

  it("creates a VM with NAT that boots a real kernel and answers exec", async () => {
    const created = await cli(["vm", "create", "--name", "one", "--image", "guest", "--nat", "--ssh-timeout", "120"]);
    expect(created.stderr).toMatch(/\n  wait-agent\s+done/);
    expect(created.stderr).toMatch(/\n  wait-ssh\s+done/);
    const uname = await cli(["vm", "exec", "one", "--", "uname", "-a"]);
    expect(uname.stdout).toMatch(new RegExp(`^Linux one ${kernelVersion?.replace(/\./g, "\\.") ?? ""} `));
    // The work disk is mounted at /root with banger's key on it.
    const key = await cli(["vm", "exec", "one", "--", "cat", "/root/.ssh/authorized_keys"]);
    expect(key.stdout).toMatch(/^ssh-ed25519 /);
    // The image carries a dropbear host key: the VM got its own (banger's initramfs, banger.id=).
    const baked = sha256(readFileSync(join(env.work, "guest", "rootfs", HOST_KEY)));
    oneHostKey = (await cli(["vm", "exec", "one", "--", "sha256sum", `/${HOST_KEY}`])).stdout.split(" ")[0] ?? "";
    expect(oneHostKey).toMatch(/^[0-9a-f]{64}$/);
    expect(oneHostKey).not.toBe(baked);
    const id = (JSON.parse((await cli(["vm", "show", "one", "--json"])).stdout) as { id: string }[])[0]?.id;
    expect((await cli(["vm", "exec", "one", "--", "cat", "/etc/banger/host-keys-of"])).stdout).toBe(`${id}\n`);
    expect(env.ns.ruleset()).toMatch(/masquerade/);
  }, 300_000);

  it("resolves <vm>.vm through banger's DNS responder, from the host and from the guest", async () => {
    const ip = (JSON.parse((await cli(["vm", "show", "one", "--json"])).stdout) as { guestIp: string }[])[0]?.guestIp;
    // On the sockets handed over (as from bangerd-dns.socket), not ones it bound itself.
    expect(env.cluster.service("orchestrator").logs.find((l) => l["msg"] === "dns responder listening")).toMatchObject({
      address: "172.30.0.1",
      port: 53,
      passed: true,
    });
    expect(env.inNs("dig", "+short", "@172.30.0.1", "one.vm").trim()).toBe(ip);
    const lookup = await cli(["vm", "exec", "one", "--", "nslookup", "one.vm"]);
    expect(lookup.stdout).toContain(ip ?? "no ip");
  }, 120_000);

  it("lists, shows logs, stats and listening ports, and logs in with the system ssh", async () => {
    const listed = JSON.parse((await cli(["vm", "list", "--json"])).stdout) as { name: string; state: string }[];
    expect(listed.map((vm) => [vm.name, vm.state])).toEqual([["one", "VM_STATE_RUNNING"]]);
    // The guest console: banger's initramfs says what it did.
    expect((await cli(["vm", "logs", "one", "--tail", "200"])).stdout).toContain("banger-init");
    const stats = await cli(["vm", "stats", "one", "--json"]);
    console.log(`e2e: vm stats: ${JSON.stringify(JSON.parse(stats.stdout))}`);
    expect(stats.stdout).toMatch(/"memory/i);
    const ports = await cli(["vm", "ports", "one", "--json"]);
    expect(ports.stdout).toMatch(/"port":\s*22\b/); // the image's dropbear
    // `vm ssh` hands over to the system ssh: run where the guest network is (the namespace).
    const ssh = sshInNs(env, "one", "cat", "/etc/hostname");
    expect(ssh).toBe("one\n");
  }, 120_000);

  it("prepares a workspace from a host git repository and exports the guest's edit as a patch", async () => {
    const repo = makeRepository(env, "project");
    await cli(["workspace", "prepare", "one", "--path", repo]);
    const listed = await cli(["vm", "exec", "one", "--", "ls", "-a", "/root/project"]);
    expect(
      listed.stdout
        .split("\n")
        .filter((f) => f !== "" && f !== "." && f !== "..")
        .sort(),
    ).toEqual([".git", ".gitignore", "README", "notes.txt"]); // build/ is ignored: it stays on the host
    await cli(["vm", "exec", "one", "--", "sh", "-c", "echo 'edited in the guest' >> /root/project/README"]);
    // git in the guest (the image carries the host's) sees the copy as a repository with that edit.
    const status = await cli(["vm", "exec", "one", "--", "git", "-C", "/root/project", "status", "--short"]);
    expect(status.stdout).toBe(" M README\n"); // copy mode: one commit of exactly what was copied
    const patch = join(env.work, "guest.patch");
    await cli(["workspace", "export", "one", "--out", patch]);
    expect(readFileSync(patch, "utf8")).toContain("+edited in the guest");
    execFileSync("git", ["-C", repo, "apply", "--check", patch]);
  }, 300_000);

  it("keeps the work disk across stop and start, and applies vm set --vcpu at restart", async () => {
    await cli(["vm", "exec", "one", "--", "sh", "-c", "echo kept > /root/note && sync"]);
    await cli(["vm", "stop", "one"]);
    expect(leftovers().qemu).toEqual([]);
    await cli(["vm", "start", "one", "--ssh-timeout", "120"]);
    expect((await cli(["vm", "exec", "one", "--", "cat", "/root/note"])).stdout).toBe("kept\n");
    // Its host key is its own for good: the same after a restart.
    expect((await cli(["vm", "exec", "one", "--", "sha256sum", `/${HOST_KEY}`])).stdout.split(" ")[0]).toBe(oneHostKey);
    const set = await cli(["vm", "set", "one", "--vcpu", "2", "--json"]);
    expect(set.stdout).toContain("vcpu=2");
    await cli(["vm", "restart", "one"]);
    expect((await cli(["vm", "exec", "one", "--", "nproc"])).stdout).toBe("2\n");
  }, 300_000);

  it("two VMs reach each other by name; the second boots an image with an init of its own", async () => {
    await cli(["vm", "create", "--name", "two", "--image", "guest-init", "--ssh-timeout", "120"]);
    // PID 1 is the image's busybox init (banger's initramfs switched to it), not banger's minimal init.
    const init = await cli(["vm", "exec", "two", "--", "cat", "/proc/1/cmdline"]);
    expect(init.stdout.split("\0")[0]).toBe("init"); // banger's minimal init runs as /run/banger/busybox sh …
    const ping = await cli(["vm", "exec", "two", "--", "ping", "-c", "1", "-W", "5", "one.vm"]);
    expect(ping.stdout).toMatch(/1 packets received/);
    // Its own acpid powers it off on QMP's power button.
    await cli(["vm", "stop", "two"]);
    expect(leftovers().qemu.length).toBe(1); // only one's QEMU is left
  }, 300_000);

  it("an image with no SSH server, no init and no libc: banger's kit serves SSH and the agent; stop goes through the agent", async () => {
    const stoppedBy = () =>
      env.cluster
        .service("orchestrator")
        .logs.filter((l) => l["vm"] === "bare" && typeof l["stopped_by"] === "string")
        .map((l) => l["stopped_by"]);
    await cli(["vm", "create", "--name", "bare", "--image", "guest-bare", "--ssh-timeout", "120"]);
    expect((await cli(["vm", "exec", "bare", "--", "cat", "/etc/os-release"])).stdout).toMatch(/banger guest image/);
    // The SSH server is the kit's dropbear, running from the tmpfs on /run.
    const server = await cli(["vm", "exec", "bare", "--", "sh", "-c", "readlink /proc/$PPID/exe"]);
    expect(server.stdout).toBe("/run/banger/kit/bin/dropbear\n");
    const shown = (JSON.parse((await cli(["vm", "show", "bare", "--json"])).stdout) as Record<string, unknown>[])[0];
    expect(shown).toMatchObject({
      agentHealth: "AGENT_HEALTH_OK",
      agentVersion: expect.stringMatching(/^\d+\.\d+/) as unknown,
    });
    expect((await cli(["vm", "list"])).stdout).toMatch(/\nbare .* ok\s*\n/);
    // No /sbin/shutdown here: guest-shutdown fails, and the agent runs the kit's poweroff (SIGUSR2 to PID 1).
    let t = Date.now();
    await cli(["vm", "stop", "bare"]);
    console.log(`e2e: bare stopped in ${((Date.now() - t) / 1000).toFixed(1)} s by ${String(stoppedBy()[0])}`);
    expect(stoppedBy()).toEqual(["the agent running the kit's poweroff"]);
    t = Date.now();
    await cli(["vm", "start", "bare", "--ssh-timeout", "120"]);
    console.log(`e2e: bare started again, exec-able in ${((Date.now() - t) / 1000).toFixed(1)} s`);
    expect((await cli(["vm", "exec", "bare", "--", "cat", "/proc/1/cmdline"])).stdout.split("\0")[0]).toBe(
      "/run/banger/busybox",
    );
    await cli(["vm", "delete", "bare"]);
    expect(stoppedBy()).toHaveLength(2);
  }, 300_000);

  it("a guest that ignores its agent and the power button is stopped with SIGTERM after the timeout", async () => {
    // With its agent stopped (SIGSTOP: its supervisor keeps waiting) and without its acpid, banger's minimal
    // init never hears the stop.
    await cli([
      "vm",
      "exec",
      "one",
      "--",
      "sh",
      "-c",
      "kill -STOP $(pidof qemu-ga) && kill $(cat /run/banger/acpid.pid)",
    ]);
    const t = Date.now();
    await cli(["vm", "stop", "one", "--timeout", "2"]);
    expect(Date.now() - t).toBeGreaterThanOrEqual(2000);
    expect(
      env.cluster
        .service("orchestrator")
        .logs.some((l) => l["msg"] === "the guest did not shut down in time; stopping the VMM"),
    ).toBe(true);
    expect(leftovers().qemu).toEqual([]);
  }, 120_000);

  it("vm run creates a VM, waits for it and prints the command's output and exit code", async () => {
    const ran = await env.cluster.cli([
      "vm",
      "run",
      "--name",
      "three",
      "--image",
      "guest",
      "--",
      "sh",
      "-c",
      "cat /etc/hostname; exit 3",
    ]);
    console.log(`e2e: banger vm run --name three … -> ${ran.code}`);
    expect([ran.code, ran.stdout]).toEqual([3, "three\n"]);
    await cli(["vm", "delete", "three"]);
  }, 300_000);

  it("deletes both: the helper's inventory is empty and no file of either VM remains", async () => {
    await cli(["vm", "delete", "one"]);
    await cli(["vm", "delete", "two"]);
    expect(leftovers()).toEqual(NOTHING);
    expect(readdirSync(join(env.cluster.runtimeDir, "vms"))).toEqual([]);
  }, 120_000);

  it("a failure injected after a real guest answered SSH leaves nothing behind", async () => {
    await env.cluster.stop("orchestrator");
    await env.cluster.start("orchestrator", {}, { failAfterStages: ["wait-ssh"] });
    const failed = await cli(["vm", "create", "--name", "doomed", "--image", "guest", "--ssh-timeout", "120"], 1);
    expect(failed.stderr).toMatch(/failed at wait-ssh: injected failure after stage wait-ssh/);
    expect(leftovers()).toEqual(NOTHING);
    // The connection banger makes once the banner is seen (for the first command) pinned no key that stays: a
    // later VM of this name would be refused its host key.
    const knownHosts = join(env.cluster.dir, "config", "banger", "ssh", "known_hosts");
    expect(existsSync(knownHosts) ? readFileSync(knownHosts, "utf8") : "").not.toMatch(/^doomed\.vm /m);
    await env.cluster.stop("orchestrator");
    await env.cluster.start("orchestrator");
  }, 300_000);
});
