/**
 * Only the owner may call the helper: the socket admits the owner's group and
 * every RPC checks the caller's SO_PEERCRED uid. Needs root (to run callers as
 * two different uids).
 */
import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawnService, waitUntil, type RunningService, OWNER_CAN_READ_CHECKOUT } from "./harness.js";

const OWNER = 1000;
let dir: string;
let helper: RunningService;

function callAs(uid: number): { ok: boolean; uid: number; code?: number } {
  const result = spawnSync(
    process.execPath,
    [join(import.meta.dirname, "fixtures/get-version.mjs"), join(dir, "privileged.sock")],
    {
      uid,
      gid: uid,
      encoding: "utf8",
    },
  );
  if (result.status !== 0) throw new Error(`caller failed: ${result.stderr}`);
  return JSON.parse(result.stdout) as { ok: boolean; uid: number; code?: number };
}

beforeAll(async () => {
  if (!OWNER_CAN_READ_CHECKOUT) return;
  dir = mkdtempSync(join(tmpdir(), "banger-access-"));
  chmodSync(dir, 0o755);
  helper = spawnService("privileged", [
    "--runtime-dir",
    dir,
    "--state-dir",
    join(dir, "state"),
    "--owner-uid",
    String(OWNER),
    "--owner-gid",
    String(OWNER),
  ]);
  await waitUntil(() => helper.logs.some((l) => l["msg"] === "listening"), helper, "helper to listen");
});

afterAll(async () => {
  if (!OWNER_CAN_READ_CHECKOUT) return;
  helper.child.kill("SIGTERM");
  await helper.exited;
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!OWNER_CAN_READ_CHECKOUT)("who may call the privileged helper", () => {
  it("answers the owner and refuses any other uid (root included) with PERMISSION_DENIED, logging the caller", async () => {
    expect(callAs(OWNER)).toEqual({ ok: true, uid: OWNER, ownerUid: OWNER });
    expect(callAs(0)).toEqual({ ok: false, uid: 0, code: Code.PermissionDenied });
    await waitUntil(
      () => helper.logs.filter((l) => String(l["msg"]).startsWith("helper rpc")).length >= 2,
      helper,
      "log lines",
    );

    const refused = helper.logs.filter((l) => l["msg"] === "helper rpc failed");
    expect(refused).toHaveLength(1);
    expect(refused[0]).toMatchObject({ caller_uid: 0, code: "permission_denied", reason: "NOT_OWNER" });
    expect(typeof refused[0]?.["caller_pid"]).toBe("number");
    const served = helper.logs.filter((l) => l["msg"] === "helper rpc completed");
    expect(served).toHaveLength(1);
    expect(served[0]).toMatchObject({ caller_uid: OWNER, rpc: "banger.privileged.v1.HostService/GetVersion" });
  });

  it("gives the socket to root and the owner's group only (0660)", () => {
    const stat = spawnSync("stat", ["-c", "%a %u %g", join(dir, "privileged.sock")], { encoding: "utf8" });
    expect(stat.stdout.trim()).toBe(`660 0 ${OWNER}`);
    // A third uid cannot even connect.
    expect(callAs(4242)).toMatchObject({ ok: false, code: Code.Unavailable });
  });
});
