/**
 * The owner's configuration reaching existing VMs, through the real three services with VMs on fake VMMs:
 * `[[file_sync]]` copies files and whole directories onto the work disk (read back with debugfs), and the SSH
 * key, git identity and file_sync entries are written again at each start, so a changed config reaches a VM
 * made before the change.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FAKE_VM_TOOLS, OWNER, startFakeVmCluster } from "./fake-vm-cluster.js";
import { OWNER_CAN_READ_CHECKOUT, type Cluster } from "./harness.js";
import { IS_ROOT } from "./netns.js";

const RUNS =
  IS_ROOT &&
  OWNER_CAN_READ_CHECKOUT &&
  requireTools("file_sync and banger's files at each start, on fake VMMs", [...FAKE_VM_TOOLS, "ssh-keygen"]).length ===
    0;

const SYNC = `
[[file_sync]]
source = "~/notes.txt"
target = "/root/notes.txt"
mode = "0640"

[[file_sync]]
source = "~/.config/tool"
target = "/root/.config/tool"
`;

let cluster: Cluster;
let shutdown: () => Promise<void>;
beforeAll(async () => {
  if (!RUNS) return;
  const started = await startFakeVmCluster({ configToml: SYNC });
  ({ cluster, shutdown } = started);
});
afterAll(async () => {
  if (RUNS) await shutdown();
});

/** Writes a file of the owner's home (the services' HOME is the cluster's directory), owned by the owner. */
function ownerFile(path: string, content: string, mode = 0o644): void {
  const full = join(cluster.dir, path);
  writeFileSync(full, content);
  chmodSync(full, mode);
  chownSync(full, OWNER, OWNER);
}
function ownerDir(path: string, mode = 0o755): void {
  const full = join(cluster.dir, path);
  mkdirSync(full, { recursive: true });
  chmodSync(full, mode);
  chownSync(full, OWNER, OWNER);
}

/** The config the orchestrator reads when it starts: restarted to read this one. */
async function configure(toml: string): Promise<void> {
  const path = join(cluster.dir, "config", "banger", "config.toml");
  writeFileSync(path, `vmm = "firecracker"\n${toml}`);
  chownSync(path, OWNER, OWNER);
  await cluster.stop("orchestrator");
  await cluster.start("orchestrator");
}

const debugfs = (disk: string, request: string) =>
  execFileSync("debugfs", ["-R", request, disk], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
const cat = (disk: string, path: string) => debugfs(disk, `cat ${path}`);
/** Type and permission bits as debugfs `stat` shows them, or "missing". */
function modeOf(disk: string, path: string): string {
  const out = execFileSync("debugfs", ["-R", `stat ${path}`, disk], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
  const match = /Type: (\w+)\s+Mode:\s+(\d+)/.exec(out);
  return match ? `${match[1]} ${match[2]}` : "missing";
}

describe.skipIf(!RUNS)("file_sync and banger's files on existing VMs", () => {
  it("copies a directory tree at create; a changed file, tree, key and git identity reach the VM at its next start", async () => {
    ownerFile("notes.txt", "v1\n");
    ownerDir(".config");
    ownerDir(".config/tool");
    ownerDir(".config/tool/bin", 0o750);
    ownerFile(".config/tool/tool.conf", "colour = true\n", 0o644);
    ownerFile(".config/tool/bin/run.sh", "#!/bin/sh\necho hi\n", 0o755);
    symlinkSync("/etc/passwd", join(cluster.dir, ".config/tool/passwd")); // never followed

    const created = await cluster.cli(["vm", "create", "--name", "keep", "--image", "tiny", "--no-ssh-wait"]);
    expect(created.code, created.stderr).toBe(0);
    const id = (JSON.parse((await cluster.cli(["vm", "show", "keep", "--json"])).stdout) as { id: string }[])[0]?.id;
    const work = join(cluster.stateDir, "vms", id ?? "", "work.ext4");
    expect(cat(work, "/notes.txt")).toBe("v1\n");
    expect(modeOf(work, "/notes.txt")).toBe("regular 0640");
    expect(cat(work, "/.config/tool/tool.conf")).toBe("colour = true\n");
    expect(modeOf(work, "/.config/tool/tool.conf")).toBe("regular 0644");
    expect(cat(work, "/.config/tool/bin/run.sh")).toBe("#!/bin/sh\necho hi\n");
    expect(modeOf(work, "/.config/tool/bin/run.sh")).toBe("regular 0755");
    expect(modeOf(work, "/.config/tool/bin")).toBe("directory 0750");
    expect(modeOf(work, "/.config/tool/passwd")).toBe("missing");
    const firstKey = cat(work, "/.ssh/authorized_keys");
    expect(firstKey).toMatch(/^ssh-ed25519 \S+ banger\n$/);

    // The owner changes the files, the tree, the key and git's identity; bangerd reads the config again.
    ownerFile("notes.txt", "v2\n");
    ownerFile(".config/tool/added.conf", "new = 1\n", 0o600);
    ownerFile(".gitconfig", "[user]\n\tname = Grace Hopper\n\temail = grace@example.org\n");
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "rotated", "-f", join(cluster.dir, "newkey")]);
    for (const file of ["newkey", "newkey.pub"]) chownSync(join(cluster.dir, file), OWNER, OWNER);
    await configure(`[ssh]\nprivate_key = "~/newkey"\n${SYNC}`);

    expect((await cluster.cli(["vm", "stop", "keep"])).code).toBe(0);
    const started = await cluster.cli(["vm", "start", "keep", "--no-ssh-wait"]);
    expect(started.code, started.stderr).toBe(0);
    expect(started.stderr).toMatch(/ {2}work-files\s+done/);
    expect(cat(work, "/notes.txt")).toBe("v2\n");
    expect(cat(work, "/.config/tool/added.conf")).toBe("new = 1\n");
    expect(modeOf(work, "/.config/tool/added.conf")).toBe("regular 0600");
    expect(cat(work, "/.config/tool/tool.conf")).toBe("colour = true\n");
    expect(cat(work, "/.gitconfig")).toContain("Grace Hopper");
    // The public key derived from the configured private key (banger names it "banger").
    const rotated = readFileSync(join(cluster.dir, "newkey.pub"), "utf8").split(" ").slice(0, 2).join(" ");
    expect(cat(work, "/.ssh/authorized_keys")).toBe(`${rotated} banger\n`);
    expect(cat(work, "/.ssh/authorized_keys")).not.toBe(firstKey);
    execFileSync("e2fsck", ["-fn", work], { stdio: "ignore" });

    // A source that is gone does not keep the VM from starting: a note on the stage, the disk as it was.
    expect((await cluster.cli(["vm", "stop", "keep"])).code).toBe(0);
    execFileSync("rm", [join(cluster.dir, "notes.txt")]);
    const again = await cluster.cli(["vm", "start", "keep", "--no-ssh-wait"]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toMatch(
      /work-files\s+done.*banger's files were not written again .*notes\.txt does not exist/s,
    );
    expect(cat(work, "/notes.txt")).toBe("v2\n");
    expect((await cluster.cli(["vm", "delete", "keep"])).code).toBe(0);
  }, 300_000);
});
