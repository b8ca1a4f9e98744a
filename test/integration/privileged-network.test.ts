/**
 * The helper's network operations for real: the helper process runs inside a
 * throwaway network namespace, the test drives it over its socket and checks
 * what the kernel shows (`ip -j link`, `nft list ruleset`). Needs root.
 */
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HostService } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { NetworkService } from "@banger/gen/banger/privileged/v1/network_pb.js";
import { Code, createClient, type Client } from "@connectrpc/connect";
import fc from "fast-check";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitUntil, failure } from "./harness.js";
import { IS_ROOT, NETNS_TOOLS, createNetNs, startHelperInNs, type HelperInNs, type NetNs } from "./netns.js";

let ns: NetNs;
let dir: string;
let helper: HelperInNs;
let network: Client<typeof NetworkService>;
let host: Client<typeof HostService>;

const OWNER = 1000;
const RUNS = IS_ROOT && requireTools("privileged network operations", NETNS_TOOLS).length === 0;

beforeAll(async () => {
  if (!RUNS) return;
  ns = createNetNs();
  dir = mkdtempSync(join(tmpdir(), "banger-net-"));
  chmodSync(dir, 0o755);
  mkdirSync(join(dir, "run"));
  helper = await startHelperInNs(ns, join(dir, "run"), join(dir, "state"), OWNER);
  network = createClient(NetworkService, helper.transport.transport);
  host = createClient(HostService, helper.transport.transport);
});

afterAll(async () => {
  if (!RUNS) return;
  await helper.stop();
  ns.remove();
  rmSync(dir, { recursive: true, force: true });
});

/** Everything a test could see change: the helper's inventory, every link in the namespace, the ruleset. */
async function snapshot(): Promise<string> {
  const inventory = await host.getInventory({});
  const links = ns.links().map((l) => [l.ifname, l.ifalias ?? "", l.master ?? ""]);
  return JSON.stringify({ inventory, links, ruleset: ns.ruleset() });
}

describe.skipIf(!RUNS)("privileged network operations in a network namespace", () => {
  it("makes a bridge, taps and NAT rules, and removes them without a trace", async () => {
    expect(await network.ensureBridge({ name: "bgr0", address: "172.30.0.1/24" })).toMatchObject({ created: true });
    expect(await network.ensureBridge({ name: "bgr0", address: "172.30.0.1/24" })).toMatchObject({ created: false });
    const bridge = ns.links().find((l) => l.ifname === "bgr0");
    expect(bridge).toMatchObject({ ifalias: "banger:bridge", linkinfo: { info_kind: "bridge" } });
    expect(ns.exec(["ip", "-4", "addr", "show", "dev", "bgr0"])).toContain("inet 172.30.0.1/24");

    const { name: tap } = await network.createTap({ vmId: "box1", bridge: "bgr0" });
    expect(tap).toMatch(/^bgr-[0-9a-f]{11}$/);
    expect((await network.createTap({ vmId: "box1", bridge: "bgr0" })).name).toBe(tap); // idempotent
    const link = ns.links().find((l) => l.ifname === tap);
    expect(link).toMatchObject({ ifalias: "banger:tap:box1", master: "bgr0", linkinfo: { info_kind: "tun" } });
    expect(ns.exec(["ip", "-d", "-j", "link", "show", "dev", tap])).toMatch(/"type":"tap"/);

    await network.createTap({ vmId: "box2", bridge: "bgr0" });
    expect(await network.enableNat({ vmId: "box1", guestAddress: "172.30.0.11", bridge: "bgr0" })).toMatchObject({
      added: true,
    });
    expect(await network.enableNat({ vmId: "box1", guestAddress: "172.30.0.11", bridge: "bgr0" })).toMatchObject({
      added: false,
    });
    await network.enableNat({ vmId: "box2", guestAddress: "172.30.0.12", bridge: "bgr0" });
    let ruleset = ns.ruleset();
    expect(ruleset).toContain("table ip banger");
    expect(ruleset).toMatch(/ip saddr 172\.30\.0\.11 oifname != "bgr0" masquerade comment "vm:box1"/);
    expect(ruleset).toMatch(/ip saddr 172\.30\.0\.12 .* comment "vm:box2"/);

    const inventory = await host.getInventory({});
    expect(inventory.links.map((l) => [l.name, l.vmId, l.master, l.ownerUid])).toEqual(
      expect.arrayContaining([
        ["bgr0", "", "", 0],
        [tap, "box1", "bgr0", OWNER],
      ]),
    );
    expect(inventory.natRules.map((r) => [r.vmId, r.guestAddress]).sort()).toEqual([
      ["box1", "172.30.0.11"],
      ["box2", "172.30.0.12"],
    ]);

    expect(await network.disableNat({ vmId: "box1" })).toMatchObject({ removed: true });
    ruleset = ns.ruleset();
    expect(ruleset).not.toContain("vm:box1");
    expect(ruleset).toContain("vm:box2");
    expect(await network.disableNat({ vmId: "box2" })).toMatchObject({ removed: true });
    expect(ns.ruleset()).not.toContain("banger"); // the last rule took the table with it
    expect(await network.disableNat({ vmId: "box2" })).toMatchObject({ removed: false });

    expect((await failure(() => network.deleteBridge({ name: "bgr0" }))).code).toBe(Code.FailedPrecondition);
    for (const vmId of ["box1", "box2"]) {
      expect(await network.deleteTap({ vmId })).toMatchObject({ existed: true });
      expect(await network.deleteTap({ vmId })).toMatchObject({ existed: false });
    }
    expect(await network.deleteBridge({ name: "bgr0" })).toMatchObject({ existed: true });
    expect(await network.deleteBridge({ name: "bgr0" })).toMatchObject({ existed: false });
    expect(ns.links().map((l) => l.ifname)).toEqual(["lo"]);
    expect(await host.getInventory({})).toMatchObject({ links: [], natRules: [] });

    // Each call is one audit line: op id, caller, operation, validated arguments, duration.
    await waitUntil(
      () => helper.logs.some((l) => l["rpc"] === "banger.privileged.v1.NetworkService/DeleteBridge"),
      undefined,
      "logs",
    );
    const created = helper.logs.find((l) => l["rpc"] === "banger.privileged.v1.NetworkService/CreateTap");
    expect(created).toMatchObject({
      msg: "helper rpc completed",
      code: "ok",
      caller_uid: OWNER,
      args: { vmId: "box1", bridge: "bgr0" },
      op_id: expect.stringMatching(/^op-[0-9a-f]{12}$/) as unknown,
      duration_ms: expect.any(Number) as unknown,
    });
  });

  it("hands warm-pool taps over to VMs", async () => {
    await network.ensureBridge({ name: "bgr0", address: "172.30.0.1/24" });
    const { name: pooled } = await network.createTap({ pool: true, bridge: "bgr0" });
    expect(pooled).toMatch(/^bgr-p[0-9a-f]{10}$/);
    const { name } = await network.createTap({ vmId: "box3", bridge: "bgr0", fromPool: pooled });
    const names = ns.links().map((l) => l.ifname);
    expect(names).toContain(name);
    expect(names).not.toContain(pooled);
    expect(ns.links().find((l) => l.ifname === name)).toMatchObject({ ifalias: "banger:tap:box3", master: "bgr0" });
    await network.deleteTap({ vmId: "box3" });
    await network.deleteBridge({ name: "bgr0" });
  });

  it("forgets the bridge's neighbour entry for the new VM's address (a deleted VM's MAC), and only that one", async () => {
    await network.ensureBridge({ name: "bgr0", address: "172.30.0.1/24" });
    // Ports first: attaching a bridge's port can change the bridge's MAC, which forgets every entry by itself.
    await network.createTap({ vmId: "box5", bridge: "bgr0" });
    const { name: pooled } = await network.createTap({ pool: true, bridge: "bgr0" });
    // What deleted VMs leave: the host's entries for their addresses name their MACs; a live VM's beside them.
    const stale = (address: string, mac: string) =>
      ns.exec(["ip", "neigh", "replace", address, "lladdr", mac, "dev", "bgr0", "nud", "stale"]);
    stale("172.30.0.21", "02:00:00:00:00:21");
    stale("172.30.0.22", "02:00:00:00:00:22");
    stale("172.30.0.23", "02:00:00:00:00:23");
    const neighbours = () => ns.exec(["ip", "-4", "neigh", "show", "dev", "bgr0"]);
    expect(neighbours()).toContain("172.30.0.21 lladdr 02:00:00:00:00:21");

    // The tap there already (a VM started again) and a warm-pool tap taken over.
    await network.createTap({ vmId: "box5", bridge: "bgr0", guestAddress: "172.30.0.21" });
    expect(neighbours()).not.toContain("172.30.0.21");
    expect(neighbours()).toContain("172.30.0.22 lladdr 02:00:00:00:00:22");
    await network.createTap({ vmId: "box6", bridge: "bgr0", fromPool: pooled, guestAddress: "172.30.0.22" });
    expect(neighbours()).not.toContain("172.30.0.22");
    expect(neighbours()).toContain("172.30.0.23 lladdr 02:00:00:00:00:23");
    // None to forget is fine.
    await network.createTap({ vmId: "box5", bridge: "bgr0", guestAddress: "172.30.0.21" });
    await network.deleteTap({ vmId: "box5" });
    await network.deleteTap({ vmId: "box6" });
    await network.deleteBridge({ name: "bgr0" });
  });

  it("hands over no warm-pool tap made for another uid than the owner (its VMM could not open it)", async () => {
    await network.ensureBridge({ name: "bgr0", address: "172.30.0.1/24" });
    // As a helper of another owner left it.
    const foreign = "bgr-p00000000cc";
    for (const argv of [
      ["ip", "tuntap", "add", "dev", foreign, "mode", "tap", "user", "4242"],
      ["ip", "link", "set", "dev", foreign, "alias", "banger:pool"],
      ["ip", "link", "set", "dev", foreign, "master", "bgr0"],
    ]) {
      ns.exec(argv);
    }
    const refused = await failure(() => network.createTap({ vmId: "box4", bridge: "bgr0", fromPool: foreign }));
    expect(refused.code).toBe(Code.FailedPrecondition);
    expect(refused.rawMessage).toBe(`${foreign} was made for uid 4242, not for the owner (uid ${OWNER})`);
    expect(ns.links().find((l) => l.ifname === foreign)).toMatchObject({ ifalias: "banger:pool" });
    // The inventory says whose it is, so the orchestrator can leave it out of its pool.
    const listed = (await host.getInventory({})).links.find((l) => l.name === foreign);
    expect(listed?.ownerUid).toBe(4242);
    expect(await network.deleteTap({ vmId: "", poolName: foreign })).toMatchObject({ existed: true });
    await network.deleteBridge({ name: "bgr0" });
  });

  it("refuses bad input with the right code and changes nothing", async () => {
    await network.ensureBridge({ name: "bgr0", address: "172.30.0.1/24" });
    // Links banger did not make, with names banger would use.
    ns.exec(["ip", "link", "add", "bgr9", "type", "bridge"]);
    ns.exec(["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"]);
    ns.exec(["ip", "addr", "add", "10.9.0.1/16", "dev", "veth0"]);
    ns.exec(["ip", "link", "set", "veth0", "up"]);
    const intruderTap = `bgr-${createHash("sha256").update("intruder").digest("hex").slice(0, 11)}`;
    ns.exec(["ip", "tuntap", "add", "dev", intruderTap, "mode", "tap"]);
    const before = await snapshot();

    const badIds = ["", "Box", "a%b", "a/b", "..", "../x", "a b", "vm-ü", "x".repeat(33), "-lead", "a\nb"];
    const cases: [string, () => Promise<unknown>, Code][] = [
      ...badIds.flatMap((vmId): [string, () => Promise<unknown>, Code][] => [
        [`createTap ${JSON.stringify(vmId)}`, () => network.createTap({ vmId, bridge: "bgr0" }), Code.InvalidArgument],
        [`deleteTap ${JSON.stringify(vmId)}`, () => network.deleteTap({ vmId }), Code.InvalidArgument],
        [`disableNat ${JSON.stringify(vmId)}`, () => network.disableNat({ vmId }), Code.InvalidArgument],
        [
          `enableNat ${JSON.stringify(vmId)}`,
          () => network.enableNat({ vmId, guestAddress: "172.30.0.9", bridge: "bgr0" }),
          Code.InvalidArgument,
        ],
      ]),
      [
        "bridge named eth0",
        () => network.ensureBridge({ name: "eth0", address: "172.31.0.1/24" }),
        Code.InvalidArgument,
      ],
      [
        "bridge name with %",
        () => network.ensureBridge({ name: "bgr%d", address: "172.31.0.1/24" }),
        Code.InvalidArgument,
      ],
      ["prefix /8", () => network.ensureBridge({ name: "bgr1", address: "10.0.0.1/8" }), Code.InvalidArgument],
      ["prefix /31", () => network.ensureBridge({ name: "bgr1", address: "172.31.0.1/31" }), Code.InvalidArgument],
      ["IPv6", () => network.ensureBridge({ name: "bgr1", address: "fd00::1/64" }), Code.InvalidArgument],
      ["network address", () => network.ensureBridge({ name: "bgr1", address: "172.31.0.0/24" }), Code.InvalidArgument],
      [
        "overlapping subnet",
        () => network.ensureBridge({ name: "bgr1", address: "10.9.5.1/24" }),
        Code.FailedPrecondition,
      ],
      [
        "a bridge banger did not make",
        () => network.ensureBridge({ name: "bgr9", address: "172.31.0.1/24" }),
        Code.PermissionDenied,
      ],
      ["delete a bridge banger did not make", () => network.deleteBridge({ name: "bgr9" }), Code.PermissionDenied],
      [
        "tap on a bridge banger did not make",
        () => network.createTap({ vmId: "ok", bridge: "bgr9" }),
        Code.PermissionDenied,
      ],
      [
        "a tap name taken by a link banger did not make",
        () => network.createTap({ vmId: "intruder", bridge: "bgr0" }),
        Code.PermissionDenied,
      ],
      ["delete a link banger did not make", () => network.deleteTap({ vmId: "intruder" }), Code.PermissionDenied],
      [
        "NAT outside the bridge",
        () => network.enableNat({ vmId: "ok", guestAddress: "10.9.0.5", bridge: "bgr0" }),
        Code.InvalidArgument,
      ],
      [
        "NAT for the bridge's own address",
        () => network.enableNat({ vmId: "ok", guestAddress: "172.30.0.1", bridge: "bgr0" }),
        Code.InvalidArgument,
      ],
      [
        "pool tap with a vm id",
        () => network.createTap({ pool: true, vmId: "ok", bridge: "bgr0" }),
        Code.InvalidArgument,
      ],
      [
        "from_pool not a pool name",
        () => network.createTap({ vmId: "ok", bridge: "bgr0", fromPool: "eth0" }),
        Code.InvalidArgument,
      ],
      ...(existsSync("/run/systemd/resolve/io.systemd.Resolve")
        ? []
        : ([
            [
              "resolver routing without systemd-resolved",
              () => network.configureResolver({ bridge: "bgr0", dnsAddress: "172.30.0.1" }),
              Code.FailedPrecondition,
            ],
          ] as [string, () => Promise<unknown>, Code][])),
      ["delete pool tap by a foreign name", () => network.deleteTap({ poolName: "veth0" }), Code.InvalidArgument],
      [
        "tap with a guest address outside the bridge",
        () => network.createTap({ vmId: "box7", bridge: "bgr0", guestAddress: "10.9.0.1" }),
        Code.InvalidArgument,
      ],
      [
        "tap with the bridge's own address as guest address",
        () => network.createTap({ vmId: "box7", bridge: "bgr0", guestAddress: "172.30.0.1" }),
        Code.InvalidArgument,
      ],
      [
        "tap with a guest address that is no address",
        () => network.createTap({ vmId: "box7", bridge: "bgr0", guestAddress: "172.30.0.5 dev lo" }),
        Code.InvalidArgument,
      ],
      [
        "pool tap with a guest address",
        () => network.createTap({ pool: true, bridge: "bgr0", guestAddress: "172.30.0.5" }),
        Code.InvalidArgument,
      ],
    ];
    for (const [what, call, code] of cases) {
      const error = await failure(call);
      expect(error.code, `${what}: ${error.rawMessage}`).toBe(code);
    }
    expect(await snapshot()).toBe(before);
    expect(ns.links().find((l) => l.ifname === intruderTap)).toBeDefined();

    ns.exec(["ip", "link", "del", "bgr9"]);
    ns.exec(["ip", "link", "del", "veth0"]);
    ns.exec(["ip", "link", "del", intruderTap]);
    await network.deleteBridge({ name: "bgr0" });
  });

  it("survives 1,000 random hostile requests per RPC: refused, nothing changed, same helper process", async () => {
    await network.ensureBridge({ name: "bgr0", address: "172.30.0.1/24" });
    const before = await snapshot();
    const pid = helper.child.pid;
    const hostile = fc.oneof(
      fc.string({ maxLength: 40 }),
      fc.string({ unit: "grapheme", maxLength: 20 }),
      fc.constantFrom(
        "..",
        "../../etc",
        "/etc/passwd",
        "a%d",
        "bgr%d",
        "eth0",
        "lo",
        "a b",
        "x".repeat(64),
        "\u0000",
        "bgr0\n",
      ),
    );
    const badId = hostile.filter((v) => !/^[a-z0-9][a-z0-9-]{0,31}$/.test(v));
    const badBridge = hostile.filter((v) => !/^bgr[a-z0-9]{1,12}$/.test(v));
    const anyText = hostile;
    const refusedCodes = [Code.InvalidArgument, Code.PermissionDenied, Code.FailedPrecondition];
    const calls: [string, fc.Arbitrary<() => Promise<unknown>>][] = [
      ["EnsureBridge", fc.record({ name: badBridge, address: anyText }).map((r) => () => network.ensureBridge(r))],
      ["DeleteBridge", badBridge.map((name) => () => network.deleteBridge({ name }))],
      [
        "CreateTap",
        fc.record({ vmId: badId, bridge: anyText, fromPool: anyText }).map((r) => () => network.createTap(r)),
      ],
      ["DeleteTap", fc.record({ vmId: badId }).map((r) => () => network.deleteTap(r))],
      [
        "EnableNat",
        fc.record({ vmId: badId, guestAddress: anyText, bridge: anyText }).map((r) => () => network.enableNat(r)),
      ],
      ["DisableNat", badId.map((vmId) => () => network.disableNat({ vmId }))],
      [
        "ConfigureResolver",
        fc.record({ bridge: badBridge, dnsAddress: anyText }).map((r) => () => network.configureResolver(r)),
      ],
      ["RemoveResolver", badBridge.map((bridge) => () => network.removeResolver({ bridge }))],
    ];
    for (const [rpc, arbitrary] of calls) {
      await fc.assert(
        fc.asyncProperty(arbitrary, async (call) => {
          const error = await failure(call);
          expect(refusedCodes, `${rpc}: ${error.code} ${error.rawMessage}`).toContain(error.code);
        }),
        { numRuns: 1000 },
      );
    }
    expect(helper.child.pid).toBe(pid);
    expect(helper.child.exitCode).toBeNull();
    expect(await snapshot()).toBe(before);
    await network.deleteBridge({ name: "bgr0" });
  }, 180_000); // 8,000 calls: a correctness test, given room on a loaded machine
});
