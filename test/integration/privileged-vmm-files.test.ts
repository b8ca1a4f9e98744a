/**
 * The owner against root in the VM's runtime directory: below `<runtime>/vms/<vm_id>/` the owner
 * controls every entry, and can swap a directory with a symlink (renameat2 RENAME_EXCHANGE) while the
 * helper removes the tree. RemoveVmmFiles must never delete anything outside it. Needs root.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HostService } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { VmmService } from "@banger/gen/banger/privileged/v1/vmm_pb.js";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT, OWNER_CAN_READ_CHECKOUT, waitUntil } from "./harness.js";
import { NETNS_TOOLS, createNetNs, startHelperInNs, type HelperInNs, type NetNs } from "./netns.js";

const OWNER = 1000;
const FAKE_VMM = join(ROOT, "services/privileged/test-fixtures/fake-vmm.mjs");
const VICTIM_FILES = 20;
const RUNS =
  OWNER_CAN_READ_CHECKOUT &&
  requireTools("RemoveVmmFiles against a swapping owner", [...NETNS_TOOLS, "/usr/bin/python3"]).length === 0;
let ns: NetNs;
let dir: string;
let helper: HelperInNs;

/** Exchanges `d` and `l` in its working directory as fast as it can, until killed. */
const FLIPPER = `
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
renameat2 = libc.renameat2
AT_FDCWD, RENAME_EXCHANGE = -100, 2
print("flipping", flush=True)
while True:
    renameat2(AT_FDCWD, b"d", AT_FDCWD, b"l", RENAME_EXCHANGE)
`;

beforeAll(async () => {
  if (!RUNS) return;
  ns = createNetNs();
  dir = mkdtempSync(join(tmpdir(), "banger-vmm-files-"));
  chmodSync(dir, 0o755);
  mkdirSync(join(dir, "run"), { mode: 0o755 });
  mkdirSync(join(dir, "state"));
  helper = await startHelperInNs(ns, join(dir, "run"), join(dir, "state"), OWNER, ["--firecracker", FAKE_VMM]);
});

afterAll(async () => {
  if (!RUNS) return;
  await helper.stop();
  ns.remove();
  rmSync(dir, { recursive: true, force: true });
});

/** What a launch leaves, as the owner arranges it: a non-empty directory `d` and `l` -> the victim. */
function plantVmDir(vmDir: string, victim: string): void {
  mkdirSync(join(dir, "run", "vms"), { recursive: true, mode: 0o711 });
  mkdirSync(vmDir, { mode: 0o770 });
  chownSync(vmDir, OWNER, 0);
  const made: string[] = [];
  for (const sub of ["d", "d/e", "d/e/f"]) {
    mkdirSync(join(vmDir, sub));
    made.push(sub);
    for (let i = 0; i < 150; i++) {
      made.push(`${sub}/file-${i}`);
      writeFileSync(join(vmDir, sub, `file-${i}`), "x");
    }
  }
  for (let i = 0; i < VICTIM_FILES; i++) {
    made.push(`file-${i}`);
    writeFileSync(join(vmDir, `file-${i}`), "x");
  }
  symlinkSync(victim, join(vmDir, "l"));
  for (const name of [...made, "l"]) chownSync(join(vmDir, name), OWNER, OWNER);
}

function startFlipper(vmDir: string): Promise<ChildProcess> {
  const flipper = spawn("/usr/bin/python3", ["-c", FLIPPER], {
    cwd: vmDir,
    uid: OWNER,
    gid: OWNER,
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    flipper.once("error", reject);
    flipper.stdout.once("data", () => resolve(flipper));
  });
}

describe.skipIf(!RUNS)("RemoveVmmFiles against an owner who swaps entries while it works", () => {
  it("never deletes outside the VM's directory: a directory/symlink flipper during 20 removals", async () => {
    const vmm = createClient(VmmService, helper.transport.transport);
    const victim = join(dir, "victim");
    mkdirSync(victim, { mode: 0o755 });
    const victimFiles = Array.from({ length: VICTIM_FILES }, (_, i) => `file-${i}`);
    for (const name of victimFiles) writeFileSync(join(victim, name), "root's\n", { mode: 0o644 });
    // The victim's own files, and d's names too, so a path followed through `l` finds something to delete.
    const vmDir = join(dir, "run", "vms", "flip");
    const outcomes: string[] = [];
    for (let round = 0; round < 20; round++) {
      plantVmDir(vmDir, victim);
      const flipper = await startFlipper(vmDir);
      try {
        outcomes.push(
          await vmm.removeVmmFiles({ vmId: "flip" }).then(
            (response) => `removed ${response.existed}`,
            (error: unknown) => {
              const failure = ConnectError.from(error);
              return `refused ${Code[failure.code]} ${failure.rawMessage}`;
            },
          ),
        );
      } finally {
        flipper.kill("SIGKILL");
        await new Promise((resolve) => flipper.once("exit", resolve));
      }
      expect(readdirSync(victim).sort(), `round ${round}: ${outcomes.at(-1)}`).toEqual([...victimFiles].sort());
      // Either the files went, or a clear refusal (FAILED_PRECONDITION with its reason, never INTERNAL).
      expect(outcomes.at(-1)).toMatch(/^removed true$|^refused FailedPrecondition /);
      rmSync(vmDir, { recursive: true, force: true }); // a refused round leaves files: start the next afresh
    }
    console.log(`RemoveVmmFiles under a flipper: ${outcomes.join("; ")}`);
    expect(outcomes.filter((o) => o === "removed true").length).toBeGreaterThan(0);
    // The helper is still up and answers.
    await waitUntil(
      async () => (await createClient(HostService, helper.transport.transport).getInventory({})) !== undefined,
      undefined,
      "the helper to answer",
    );
  });
});
