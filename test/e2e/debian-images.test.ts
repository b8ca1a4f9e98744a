/**
 * Real Debian images through banger's puller: bookworm minbase (the shape of
 * docker.io/library/debian:bookworm: no init, no SSH server) and minbase +
 * systemd-sysv + openssh-server, built by test/e2e/support/debian-images.mjs
 * with mmdebstrap from Debian's archive (cached between local runs; built
 * once per run on a fresh machine), pushed to a real registry on 127.0.0.1
 * and pulled with the CLI through the real services.
 *
 * The guests' own cases (create, exec, ssh, run, workspaces, stop, start,
 * delete) come with the guest kit.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../integration/harness.js";
import {
  guestSuiteMissing,
  NOTHING,
  makeRepository,
  sshInNs,
  startGuestEnv,
  type GuestEnv,
} from "./support/guest-env.js";

const missing = guestSuiteMissing("the Debian images", ["mmdebstrap"]);
const debian = describe.skipIf(missing.length > 0);

let env: GuestEnv;
const cli = (args: string[], expectCode = 0) => env.cli(args, expectCode);
const seconds = (since: number) => ((Date.now() - since) / 1000).toFixed(1);

/** Builds (or takes from the cache) and pushes one image; prints what it took. */
function buildAndPush(image: string, registryHost: string): string {
  const reference = `${registryHost}/debian/${image}:latest`;
  const t = Date.now();
  const out = execFileSync(
    process.execPath,
    [join(ROOT, "test/e2e/support/debian-images.mjs"), "--image", image, "--push", reference],
    { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] },
  );
  const built = JSON.parse(out) as { cached: boolean; buildSeconds: number; tarBytes: number; layerBytes: number };
  const mib = (bytes: number) => `${(bytes / 1048576).toFixed(1)} MiB`;
  console.log(
    `e2e: debian ${image}: ${built.cached ? "from the cache" : `built in ${built.buildSeconds.toFixed(1)} s`}, ` +
      `tar ${mib(built.tarBytes)}, layer ${mib(built.layerBytes)}, ready and pushed in ${seconds(t)} s`,
  );
  return reference;
}

const references: Record<string, string> = {};

beforeAll(async () => {
  if (missing.length > 0) return;
  env = await startGuestEnv((registry) => {
    for (const image of ["minbase", "systemd-ssh"]) references[image] = buildAndPush(image, registry.host);
  });
}, 1_200_000);

afterAll(async () => {
  if (missing.length > 0) return;
  await env?.shutdown();
});

/** How the orchestrator said it stopped `vm`, in order. */
const stoppedBy = (vm: string) =>
  env.cluster
    .service("orchestrator")
    .logs.filter((l) => l["vm"] === vm && typeof l["stopped_by"] === "string")
    .map((l) => ({ by: l["stopped_by"], ms: l["duration_ms"] }));

/** The VM's disks on the host, checked read-only with e2fsck (throws unless clean). */
function checkDisksClean(vm: string) {
  const id = (
    JSON.parse(
      execFileSync(join(ROOT, "bin/banger"), ["vm", "show", vm, "--json"], {
        encoding: "utf8",
        env: { ...process.env, BANGER_RUNTIME_DIR: env.cluster.runtimeDir, BANGER_SOCKET: "" },
      }),
    ) as { id: string }[]
  )[0]?.id;
  for (const disk of ["root.ext4", "work.ext4"]) {
    const path = join(env.cluster.stateDir, "vms", id ?? "none", disk);
    execFileSync("e2fsck", ["-fn", path], { stdio: "ignore" });
  }
}

debian("real Debian images (mmdebstrap) through banger's puller", () => {
  it("pulls bookworm minbase, imports the kernel and builds its initramfs", async () => {
    const t = Date.now();
    await cli(["image", "pull", references["minbase"] ?? "", "--name", "debian-minbase"]);
    console.log(`e2e: debian minbase pulled in ${seconds(t)} s`);
    const shown = JSON.parse((await cli(["image", "show", "debian-minbase", "--json"])).stdout) as unknown;
    expect(JSON.stringify(shown)).toContain("debian-minbase");
    await env.importKernel();
  }, 300_000);

  it("pulls minbase + systemd + openssh-server, systemd's escaped unit names kept exactly", async () => {
    await cli(["image", "pull", references["systemd-ssh"] ?? "", "--name", "debian-systemd"]);
    const rootfs = join(env.cluster.stateDir, "images", "debian-systemd", "rootfs.ext4");
    const units = execFileSync("debugfs", ["-R", "ls -p /usr/lib/systemd/system", rootfs], {
      encoding: "latin1",
      stdio: ["ignore", "pipe", "ignore"],
    });
    expect(units).toContain("/system-systemd\\x2dcryptsetup.slice/");
    execFileSync("e2fsck", ["-fn", rootfs], { stdio: "ignore" }); // throws unless the image is clean
  }, 300_000);

  // Each image as users bring it, nothing prepared: minbase has no init and no SSH server (banger's minimal
  // init, the kit's dropbear and agent); systemd-ssh boots systemd and its own sshd (the kit's agent).
  for (const [image, name, vm, server] of [
    ["minbase", "debian-minbase", "deb-min", "/run/banger/kit/bin/dropbear"],
    ["systemd-ssh", "debian-systemd", "deb-sd", "/usr/sbin/sshd"],
  ] as const) {
    it(`${image}: create, exec, ssh and vm run, through banger's guest kit`, async () => {
      const t = Date.now();
      const created = await cli(["vm", "create", "--name", vm, "--image", name, "--ssh-timeout", "180"]);
      expect(created.stderr).toMatch(/\n  wait-agent\s+done/);
      const release = await cli(["vm", "exec", vm, "--", "cat", "/etc/os-release"]);
      console.log(`e2e: debian ${image}: create -> exec-able in ${seconds(t)} s`);
      expect(release.stdout).toContain('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"');
      // Which SSH server answers: the kit's dropbear where the image has none, else the image's sshd.
      const parent = await cli(["vm", "exec", vm, "--", "sh", "-c", "readlink /proc/$PPID/exe"]);
      expect(parent.stdout).toBe(`${server}\n`);
      const shown = (JSON.parse((await cli(["vm", "show", vm, "--json"])).stdout) as Record<string, unknown>[])[0];
      expect(shown).toMatchObject({ agentHealth: "AGENT_HEALTH_OK" });
      expect(sshInNs(env, vm, "cat", "/etc/hostname")).toBe(`${vm}\n`);
      const ran = await cli(
        ["vm", "run", "--name", `${vm}-run`, "--image", name, "--", "sh", "-c", "uname -s; exit 4"],
        4,
      );
      expect(ran.stdout).toBe("Linux\n");
      await cli(["vm", "delete", `${vm}-run`]);
    }, 600_000);

    it(`${image}: workspace prepare and export`, async () => {
      const repo = makeRepository(env, `project-${image}`);
      await cli(["workspace", "prepare", vm, "--path", repo]);
      const path = `/root/project-${image}`;
      const listed = await cli(["vm", "exec", vm, "--", "ls", "-A", path]);
      expect(
        listed.stdout
          .split("\n")
          .filter((f) => f !== "")
          .sort(),
      ).toEqual([".git", ".gitignore", "README", "notes.txt"]);
      await cli(["vm", "exec", vm, "--", "sh", "-c", `echo 'edited in ${image}' >> ${path}/README`]);
      const patch = join(env.work, `${image}.patch`);
      await cli(["workspace", "export", vm, "--out", patch]);
      expect(readFileSync(patch, "utf8")).toContain(`+edited in ${image}`);
      execFileSync("git", ["-C", repo, "apply", "--check", patch]);
    }, 300_000);

    it(`${image}: stops gracefully through its agent with clean disks, starts again, deletes leaving nothing`, async () => {
      let t = Date.now();
      await cli(["vm", "stop", vm]);
      const stop = stoppedBy(vm).at(-1);
      console.log(`e2e: debian ${image}: stopped in ${seconds(t)} s (${String(stop?.ms)} ms by ${String(stop?.by)})`);
      expect(String(stop?.by)).toMatch(/^the agent/);
      const failed = env.cluster
        .service("orchestrator")
        .logs.filter((l) => l["vm"] === vm && String(l["msg"]).startsWith("the guest's shutdown failed"))
        .map((l) => JSON.stringify((l["err"] as { message?: string } | undefined)?.message));
      if (failed.length > 0) console.log(`e2e: debian ${image}: the image's own shutdown failed: ${failed.join("; ")}`);
      expect(env.leftovers().qemu).toEqual([]);
      checkDisksClean(vm); // nothing to replay on the next boot
      t = Date.now();
      await cli(["vm", "start", vm, "--ssh-timeout", "180"]);
      const kept = await cli(["vm", "exec", vm, "--", "cat", `/root/project-${image}/README`]);
      console.log(`e2e: debian ${image}: start -> exec-able in ${seconds(t)} s`);
      expect(kept.stdout).toBe(`hello\nedited in ${image}\n`);
      await cli(["vm", "delete", vm]);
      expect(env.leftovers()).toEqual(NOTHING);
    }, 300_000);
  }
});
