/**
 * What a VM's launch depends on that an earlier run may have left, through the real services and the
 * CLI in a throwaway network namespace (the helper as root, the rest as the owner, uid 1000):
 * warm-pool taps made for another owner are not taken (its VMM could not open them), and a VMM that
 * fails tells the client why, in its own words.
 */
import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { requireTools } from "@banger/common/testing";
import { FAKE_VMM, FAKE_VM_TOOLS, OWNER, startFakeVmCluster } from "./fake-vm-cluster.js";
import { OWNER_CAN_READ_CHECKOUT, waitUntil, type Cluster } from "./harness.js";
import { IS_ROOT, type NetNs } from "./netns.js";

const live = describe.skipIf(
  !IS_ROOT ||
    !OWNER_CAN_READ_CHECKOUT ||
    requireTools("VM launches on fake VMMs (pool taps, the VMM's own words)", FAKE_VM_TOOLS).length > 0,
);

/** Pool taps as an earlier helper left them: one made for another uid, one for this owner. */
const FOREIGN_TAP = "bgr-p00000000aa";
const OWN_TAP = "bgr-p00000000bb";

let ns: NetNs;
let cluster: Cluster;
let shutdown: () => Promise<void>;
let vmmDir: string;

/**
 * The "VMM" the helper launches: the fake, or (by the mode file beside it) one that prints to its stderr
 * and exits at once, or one that first makes its API socket (as QEMU makes its QMP socket before it opens
 * the tap) and then does the same.
 */
function writeVmm(dir: string): string {
  const path = join(dir, "vmm.sh");
  writeFileSync(
    path,
    [
      "#!/bin/sh",
      `mode=$(cat ${join(dir, "mode")})`,
      `[ "$mode" = fake ] && exec ${process.execPath} ${FAKE_VMM} "$@"`,
      `[ "$mode" = late ] && python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$2"`,
      'echo "vmm: starting $4" >&2',
      'echo "vmm: could not configure /dev/net/tun (bgr-x): Operation not permitted" >&2',
      "exit 1",
      "",
    ].join("\n"),
    { mode: 0o755 },
  );
  return path;
}
const vmmMode = (mode: "fake" | "early" | "late") => writeFileSync(join(vmmDir, "mode"), mode);

beforeAll(async () => {
  if (!IS_ROOT || !OWNER_CAN_READ_CHECKOUT) return;
  vmmDir = mkdtempSync(join(tmpdir(), "banger-vmm-"));
  chmodSync(vmmDir, 0o755);
  vmmMode("fake");
  const started = await startFakeVmCluster({
    firecracker: writeVmm(vmmDir),
    prepareNetns: (netns) => {
      const ip = (...args: string[]) => netns.exec(["ip", ...args]);
      ip("link", "add", "bgr0", "type", "bridge");
      ip("link", "set", "dev", "bgr0", "alias", "banger:bridge");
      ip("addr", "add", "172.30.0.1/24", "dev", "bgr0");
      ip("link", "set", "dev", "bgr0", "up");
      for (const [tap, uid] of [
        [FOREIGN_TAP, 4242],
        [OWN_TAP, OWNER],
      ] as const) {
        ip("tuntap", "add", "dev", tap, "mode", "tap", "user", String(uid));
        ip("link", "set", "dev", tap, "alias", "banger:pool");
        ip("link", "set", "dev", tap, "master", "bgr0");
        ip("link", "set", "dev", tap, "up");
      }
    },
  });
  ({ ns, cluster } = started);
  shutdown = started.shutdown;
}, 120_000);

afterAll(async () => {
  if (!IS_ROOT || !OWNER_CAN_READ_CHECKOUT) return;
  spawnSync("pkill", ["-f", `${FAKE_VMM} --api-sock ${cluster.runtimeDir}/`]);
  await shutdown();
  rmSync(vmmDir, { recursive: true, force: true });
});

/** A tap's tun owner (the uid that may open it without CAP_NET_ADMIN). */
const tunOwner = (tap: string) => ns.exec(["cat", `/sys/class/net/${tap}/owner`]).trim();
const tapNames = () => ns.links().map((l) => l.ifname);

live("warm-pool taps of another owner", () => {
  it("are deleted at start, and a VM is given one of this owner's", async () => {
    // The orchestrator's start-up has looked at the host: the other uid's pool tap is gone, this owner's kept.
    await waitUntil(() => !tapNames().includes(FOREIGN_TAP), undefined, "the foreign pool tap to go");
    expect(tapNames()).toContain(OWN_TAP);
    expect(tunOwner(OWN_TAP)).toBe(String(OWNER));

    const created = await cluster.cli(["vm", "create", "--name", "pooled", "--image", "tiny", "--no-ssh-wait"]);
    expect(created.code, created.stderr).toBe(0);
    expect(created.stderr).toMatch(/\n {2}tap\s+done \([\d.]+ s\): tap bgr-[0-9a-f]{11} from the warm pool\n/);
    // Every tap on the bridge now (the VM's and the pool's refills) is this owner's.
    await waitUntil(() => tapNames().filter((n) => n.startsWith("bgr-p")).length >= 1, undefined, "the pool refill");
    for (const tap of tapNames().filter((n) => n.startsWith("bgr-") && n !== "bgr0")) {
      expect(tunOwner(tap), tap).toBe(String(OWNER));
    }
    expect((await cluster.cli(["vm", "delete", "pooled"])).code).toBe(0);
  });
});

live("a VMM that fails at launch", () => {
  for (const [mode, stage, why] of [
    ["early", "launch-vmm", "the VMM exited (code 1) before it opened its socket"],
    // Not "… unreachable: ECONNREFUSED" once the wait for its API runs out: the wait ends when the VMM does.
    ["late", "configure-vmm", "the VMM exited before it answered on its API socket"],
  ] as const) {
    it(`shows the VMM's own stderr in the error the client gets (${mode === "early" ? "exits before its socket" : "exits after making its socket"})`, async () => {
      vmmMode(mode);
      try {
        const created = await cluster.cli([
          "vm",
          "create",
          "--name",
          `broken-${mode}`,
          "--image",
          "tiny",
          "--no-ssh-wait",
        ]);
        expect(created.code).toBe(1);
        // A VMM gone before the helper read its /proc entry is "exited at once"; both say why, with its stderr.
        const early = "the VMM exited at once";
        expect(created.stderr).toMatch(
          mode === "early"
            ? new RegExp(`banger: failed at ${stage}: (${why.replace(/[()]/g, "\\$&")}|${early})`)
            : new RegExp(`banger: failed at ${stage}: ${why}`),
        );
        expect(created.stderr).toContain("vmm: could not configure /dev/net/tun (bgr-x): Operation not permitted");
        // Recorded with the failed operation, which outlives the VM's files.
        const opId = /\((op-[0-9a-f]{12})\)\n$/.exec(created.stderr)?.[1] ?? "";
        const shown = await cluster.cli(["op", "show", opId]);
        expect(shown.stdout).toContain("vmm: could not configure /dev/net/tun (bgr-x): Operation not permitted");
        expect((await cluster.cli(["vm", "show", `broken-${mode}`])).code).toBe(1); // rolled back
      } finally {
        vmmMode("fake");
      }
    });
  }
});
