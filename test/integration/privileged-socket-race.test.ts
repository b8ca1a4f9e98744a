/**
 * The owner against the helper's socket (issue 14, point 1). In dev mode the runtime directory is
 * the owner's: the owner can rename a symlink over `privileged.sock` the moment the helper binds it
 * (inotify tells them when). Root must never change what the name points at by then: the socket is
 * born with its mode and group, and nothing chmods or chowns it by name afterwards. Needs root (the
 * helper) and uid 1000 (the owner).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OWNER_CAN_READ_CHECKOUT, spawnService, waitUntil, type RunningService } from "./harness.js";

const OWNER = 1000;
const ROUNDS = 50;
const PYTHON = "/usr/bin/python3";

/**
 * The owner's flipper: waits on inotify for `privileged.sock` to be created in the runtime
 * directory, then at once renames a ready symlink to the victim over it; prints one line a swap.
 */
const FLIPPER = String.raw`
import ctypes, os, struct, sys
run, victim = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
if fd < 0 or libc.inotify_add_watch(fd, run.encode(), 0x100) < 0:  # IN_CREATE
    sys.exit("inotify: errno %d" % ctypes.get_errno())
sock, spare = os.path.join(run, "privileged.sock"), os.path.join(run, ".flip")
print("ready", flush=True)
while True:
    try:
        os.symlink(victim, spare)
    except FileExistsError:
        pass
    data, off = os.read(fd, 65536), 0
    while off < len(data):
        _wd, _mask, _cookie, size = struct.unpack_from("iIII", data, off)
        name, off = data[off + 16 : off + 16 + size].rstrip(b"\0"), off + 16 + size
        if name == b"privileged.sock":
            os.rename(spare, sock)
            print("swapped", flush=True)
`;

let dir: string;
let runtimeDir: string;
let victim: string;

function helperArgs(): string[] {
  return [
    "--runtime-dir",
    runtimeDir,
    "--state-dir",
    join(dir, "state"),
    "--owner-uid",
    `${OWNER}`,
    "--owner-gid",
    `${OWNER}`,
  ];
}

function victimState(): string {
  const st = lstatSync(victim);
  return `mode ${(st.mode & 0o7777).toString(8)} uid ${st.uid} gid ${st.gid} content ${JSON.stringify(readFileSync(victim, "utf8"))}`;
}

function callAs(uid: number): { ok: boolean; uid: number; code?: number } {
  const result = spawnSync(
    process.execPath,
    [join(import.meta.dirname, "fixtures/get-version.mjs"), join(runtimeDir, "privileged.sock")],
    { uid, gid: uid, encoding: "utf8" },
  );
  if (result.status !== 0) throw new Error(`caller failed: ${result.stderr}`);
  return JSON.parse(result.stdout) as { ok: boolean; uid: number; code?: number };
}

async function stopHelper(helper: RunningService): Promise<void> {
  helper.child.kill("SIGTERM");
  await helper.exited;
}

beforeAll(() => {
  if (!OWNER_CAN_READ_CHECKOUT) return;
  dir = mkdtempSync(join(tmpdir(), "banger-sockrace-"));
  chmodSync(dir, 0o755);
  // As `sudo banger dev up` makes it: the runtime directory belongs to the owner.
  runtimeDir = join(dir, "run");
  mkdirSync(runtimeDir, { mode: 0o700 });
  chownSync(runtimeDir, OWNER, OWNER);
  victim = join(dir, "shadow");
  writeFileSync(victim, "root:secret-hash:19000::::::\n", { mode: 0o600 });
});

afterAll(() => {
  if (!OWNER_CAN_READ_CHECKOUT) return;
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!OWNER_CAN_READ_CHECKOUT)("the owner swaps a symlink over the helper's socket as it starts", () => {
  it(`leaves the symlink's target (a root-owned 0600 file) unchanged through ${ROUNDS} helper starts`, async () => {
    const before = victimState();
    expect(before).toMatch(/^mode 600 uid 0 gid 0 /);
    const flipper: ChildProcess = spawn(
      "setpriv",
      ["--reuid", `${OWNER}`, "--regid", `${OWNER}`, "--clear-groups", PYTHON, "-c", FLIPPER, runtimeDir, victim],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let flipperOut = "";
    let flipperErr = "";
    flipper.stdout?.on("data", (c: Buffer) => (flipperOut += c.toString()));
    flipper.stderr?.on("data", (c: Buffer) => (flipperErr += c.toString()));
    const changed: string[] = [];
    try {
      await waitUntil(() => flipperOut.includes("ready"), undefined, `the flipper to watch (${flipperErr})`);
      for (let round = 1; round <= ROUNDS; round++) {
        rmSync(join(runtimeDir, "privileged.sock"), { force: true }); // the last round's symlink
        const swapsBefore = flipperOut.split("swapped").length;
        const helper = spawnService("privileged", helperArgs());
        try {
          await waitUntil(() => helper.logs.some((l) => l["msg"] === "listening"), helper, `helper start ${round}`);
          // The owner's symlink stands where the socket was made: the attack was tried this round.
          await waitUntil(
            () => flipperOut.split("swapped").length > swapsBefore,
            undefined,
            `the flipper's swap in round ${round} (${flipperErr})`,
          );
          expect(lstatSync(join(runtimeDir, "privileged.sock")).isSymbolicLink()).toBe(true);
        } finally {
          await stopHelper(helper);
        }
        const now = victimState();
        if (now !== before) changed.push(`round ${round}: ${now}`);
      }
    } finally {
      flipper.kill("SIGKILL");
    }
    expect(changed).toEqual([]);
    expect(victimState()).toBe(before);

    // Unattacked, in the same owner-writable directory, the helper still answers the owner alone.
    rmSync(join(runtimeDir, "privileged.sock"), { force: true });
    const helper = spawnService("privileged", helperArgs());
    try {
      await waitUntil(() => helper.logs.some((l) => l["msg"] === "listening"), helper, "the helper to listen");
      const st = lstatSync(join(runtimeDir, "privileged.sock"));
      expect([st.isSocket(), st.mode & 0o777, st.uid, st.gid]).toEqual([true, 0o660, 0, OWNER]);
      expect(callAs(OWNER)).toEqual({ ok: true, uid: OWNER, ownerUid: OWNER });
      expect(callAs(0)).toEqual({ ok: false, uid: 0, code: Code.PermissionDenied });
      expect(callAs(4242)).toMatchObject({ ok: false, code: Code.Unavailable });
    } finally {
      await stopHelper(helper);
    }
  }, 300_000);
});
