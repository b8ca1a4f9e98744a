/**
 * `banger image …` and `banger op …` through the real three services and a
 * real registry on 127.0.0.1 (Debian's docker-registry; the image is built by
 * the test and pushed with skopeo).
 */
import { EXT4_TOOLS, requireTools } from "@banger/common/testing";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  REGISTRY_TOOLS,
  makeImage,
  makeLayer,
  skopeoCopy,
  writeOciLayout,
} from "../../services/image-puller/test-support/registry/oci-image.js";
import {
  startRegistry,
  type RegistryProcess,
} from "../../services/image-puller/test-support/registry/registry-process.js";
import { createUnixTransport } from "@banger/common";
import { PullerService } from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import { ImageService } from "@banger/gen/banger/v1/image_pb.js";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { startCluster, type Cluster } from "./harness.js";

const HAVE_REGISTRY_TOOLS =
  requireTools("pulls through the puller and the CLI from a real registry", [...REGISTRY_TOOLS, ...EXT4_TOOLS])
    .length === 0;

let cluster: Cluster;
let registry: RegistryProcess;
let work: string;
beforeAll(async () => {
  cluster = await startCluster();
  if (!HAVE_REGISTRY_TOOLS) return;
  work = mkdtempSync(join(tmpdir(), "banger-cli-img-"));
  registry = await startRegistry(join(work, "registry"));
  const layout = join(work, "layout");
  writeOciLayout(layout, {
    v1: makeImage("amd64", [makeLayer({ "etc/os-release": "ID=tiny\n", "root/.profile": "PS1=tiny\n" })]),
  });
  await skopeoCopy(layout, "v1", `${registry.host}/tiny/os:v1`);
  const layout2 = join(work, "layout2");
  writeOciLayout(layout2, { v2: makeImage("amd64", [makeLayer({ "etc/os-release": "ID=tiny2\n" })]) });
  await skopeoCopy(layout2, "v2", `${registry.host}/tiny/os:v2`);
});
afterAll(async () => {
  await cluster.shutdown();
  if (!HAVE_REGISTRY_TOOLS) return;
  await registry.stop();
  rmSync(work, { recursive: true, force: true });
});

const opIdIn = (text: string) => /\((op-[0-9a-f]{12})\)/.exec(text)?.[1] ?? "";

describe("banger image and op", () => {
  it("show and delete of a missing image, with the op id on errors", async () => {
    expect(JSON.parse((await cluster.cli(["image", "list", "--json"])).stdout)).toEqual([]);
    const missing = await cluster.cli(["image", "show", "nope"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^banger: image nope does not exist \(op-[0-9a-f]{12}\)\n$/);
    const deleted = await cluster.cli(["image", "delete", "nope"]);
    expect([deleted.code, deleted.stderr]).toEqual([0, "no image nope: nothing to delete\n"]);
  });

  it.skipIf(!HAVE_REGISTRY_TOOLS)(
    "pulls from a registry into a checked ext4 image that op show/list can find, then deletes it",
    async () => {
      const reference = `${registry.host}/tiny/os:v1`;
      const pull = await cluster.cli(["image", "pull", reference, "--name", "tiny"]);
      const opId = opIdIn(pull.stderr);
      expect(pull.stderr, pull.stderr).toContain(`pulling ${reference} as tiny (${opId})`);
      expect(pull.code, pull.stderr).toBe(0);
      for (const stage of ["resolve", "layers", "mkfs", "ownership", "work-seed", "verify", "publish"]) {
        expect(pull.stderr).toMatch(new RegExp(`  ${stage}\\s+done`));
      }
      // Not a terminal: one plain line per layer once its bytes are in (a terminal gets live bars).
      expect(pull.stderr).toMatch(/\n {4}layer 1\/1 [0-9a-f]{12} \d+\.\d MiB (downloaded|applied)\n/);
      expect(pull.stderr).not.toContain("\x1b");
      expect(pull.stdout).toMatch(/^NAME\s+REFERENCE/);

      const rootfs = join(cluster.stateDir, "images", "tiny", "rootfs.ext4");
      expect(existsSync(rootfs)).toBe(true);
      execFileSync("e2fsck", ["-fn", rootfs], { stdio: "ignore" });
      expect(
        execFileSync("debugfs", ["-R", "cat /etc/os-release", rootfs], {
          encoding: "utf8",
          stdio: ["ignore", "pipe", "ignore"],
        }),
      ).toBe("ID=tiny\n");

      const listed = JSON.parse((await cluster.cli(["image", "list", "--json"])).stdout) as {
        name: string;
        reference: string;
      }[];
      expect(listed.map((i) => [i.name, i.reference])).toEqual([["tiny", reference]]);
      const shown = JSON.parse((await cluster.cli(["op", "show", opId, "--json"])).stdout) as Record<string, unknown>;
      expect(shown).toMatchObject({
        id: opId,
        kind: "OPERATION_KIND_PULL_IMAGE",
        state: "OPERATION_STATE_SUCCEEDED",
        target: "tiny",
      });
      expect((await cluster.cli(["op", "list"])).stdout).toMatch(new RegExp(`${opId}\\s+tiny\\s+succeeded`));
      // One op id across the orchestrator's and the puller's lines of that pull.
      expect(new Set(cluster.linesWithOpId(opId).map((l) => l["service"]))).toEqual(
        new Set(["orchestrator", "image-puller"]),
      );

      const again = await cluster.cli(["image", "pull", reference, "--name", "tiny"]);
      expect(again.code).toBe(1);
      expect(again.stderr).toMatch(/^banger: image tiny already exists \(op-[0-9a-f]{12}\)\n$/);

      expect((await cluster.cli(["image", "delete", "tiny"])).code).toBe(0);
      expect(existsSync(join(cluster.stateDir, "images", "tiny"))).toBe(false);
      expect(JSON.parse((await cluster.cli(["image", "list", "--json"])).stdout)).toEqual([]);
    },
  );
});

describe("image catalog, pull --min-rootfs and --replace", () => {
  it("lists the catalog's names, none of them local, as a table and as JSON", async () => {
    const table = await cluster.cli(["image", "catalog"]);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/^NAME\s+LOCAL\s+REFERENCE\s+DESCRIPTION\n/);
    expect(table.stdout).toMatch(/\ndebian\s+no\s+docker\.io\/library\/debian:bookworm\s+Debian 12/);
    const entries = JSON.parse((await cluster.cli(["image", "catalog", "--json"])).stdout) as {
      name: string;
      reference: string;
      local?: boolean;
    }[];
    expect(entries.map((e) => e.name)).toEqual(["alpine", "debian", "ubuntu"]);
    expect(entries.every((e) => e.reference.startsWith("docker.io/") && e.local !== true)).toBe(true);
  });

  it("refuses a --min-rootfs that is not a number of MiB before asking anything", async () => {
    const refused = await cluster.cli(["image", "pull", "debian", "--min-rootfs", "1.5G"]);
    expect([refused.code, refused.stderr]).toEqual([
      2,
      "banger: --min-rootfs must be a positive whole number of MiB, got 1.5G\nRun 'banger --help' for usage.\n",
    ]);
    // A number out of range is the orchestrator's to refuse, before any operation.
    const small = await cluster.cli(["image", "pull", "debian", "--min-rootfs", "10", "--json"]);
    expect([small.code, small.stdout]).toEqual([1, ""]);
    expect(small.stderr).toMatch(/^banger: min_rootfs_mib must be 64-1048576 MiB .*got 10 \(op-[0-9a-f]{12}\)\n$/);
    expect(JSON.parse((await cluster.cli(["op", "list", "--json"])).stdout)).not.toContainEqual(
      expect.objectContaining({ target: "debian" }),
    );
  });

  it.skipIf(!HAVE_REGISTRY_TOOLS)(
    "pulls to the asked root filesystem size, and replaces a local image only with --replace",
    async () => {
      const rootfs = join(cluster.stateDir, "images", "swap", "rootfs.ext4");
      const osRelease = () =>
        execFileSync("debugfs", ["-R", "cat /etc/os-release", rootfs], {
          encoding: "utf8",
          stdio: ["ignore", "pipe", "ignore"],
        });
      const first = await cluster.cli([
        "image",
        "pull",
        `${registry.host}/tiny/os:v1`,
        "--name",
        "swap",
        "--min-rootfs",
        "100",
        "--json",
      ]);
      expect(first.code, first.stderr).toBe(0);
      const [pulled] = JSON.parse(first.stdout) as { rootfsBytes: string }[];
      // 100 MiB asked, not the config's default of 2048.
      expect(Number(pulled?.rootfsBytes)).toBeGreaterThanOrEqual(100 * 2 ** 20);
      expect(Number(pulled?.rootfsBytes)).toBeLessThan(2048 * 2 ** 20);
      expect(statSync(rootfs).size).toBe(Number(pulled?.rootfsBytes));
      expect(osRelease()).toBe("ID=tiny\n");

      const v2 = `${registry.host}/tiny/os:v2`;
      const taken = await cluster.cli(["image", "pull", v2, "--name", "swap"]);
      expect([taken.code, taken.stderr]).toEqual([1, expect.stringMatching(/^banger: image swap already exists /)]);

      const replaced = await cluster.cli(["image", "pull", v2, "--name", "swap", "--replace", "--min-rootfs", "64"]);
      expect(replaced.code, replaced.stderr).toBe(0);
      expect(osRelease()).toBe("ID=tiny2\n");
      const listed = JSON.parse((await cluster.cli(["image", "list", "--json"])).stdout) as {
        name: string;
        reference: string;
      }[];
      expect(listed.map((i) => [i.name, i.reference])).toEqual([["swap", v2]]);
      // Nothing of the old image or the pull left beside it.
      expect(readdirSync(join(cluster.stateDir, "images", ".staging"))).toEqual([]);
      expect(readdirSync(join(cluster.stateDir, "images")).sort()).toEqual([".staging", "swap"]);
      expect((await cluster.cli(["image", "delete", "swap"])).code).toBe(0);
    },
  );
});

describe("banger prune", () => {
  it("--force alone is refused before anything is asked", async () => {
    const refused = await cluster.cli(["prune", "--force"]);
    expect([refused.code, refused.stderr]).toEqual([
      2,
      "banger: --force deletes what --all lists: give both\nRun 'banger --help' for usage.\n",
    ]);
  });

  it.skipIf(!HAVE_REGISTRY_TOOLS)(
    "empties the puller's cache, lists an unused image with --all and deletes it only with --force",
    async () => {
      const reference = `${registry.host}/tiny/os:v1`;
      expect((await cluster.cli(["image", "pull", reference, "--name", "idle"])).code).toBe(0);

      const first = await cluster.cli(["prune"]);
      expect(first.code, first.stderr).toBe(0);
      expect(first.stdout).toMatch(/^operations: 0 removed \(ended over 30 days ago\)\n/);
      expect(first.stdout).toMatch(/image puller's cache: [1-9]\d* blobs removed, \d+\.\d MiB freed\n/);
      expect(first.stdout).not.toContain("idle");

      const listed = await cluster.cli(["prune", "--all"]);
      expect(listed.stdout).toMatch(/image\s+idle\s+\d+\.\d MiB\s+would delete/);
      expect(listed.stdout).toContain("run again with --all --force to delete them");
      expect(existsSync(join(cluster.stateDir, "images", "idle"))).toBe(true);

      const forced = await cluster.cli(["prune", "--all", "--force", "--json"]);
      expect(forced.code, forced.stderr).toBe(0);
      const report = JSON.parse(forced.stdout) as { unused: { kind: string; name: string; removed: boolean }[] };
      expect(report.unused).toEqual([expect.objectContaining({ kind: "image", name: "idle", removed: true })]);
      expect(existsSync(join(cluster.stateDir, "images", "idle"))).toBe(false);
      expect(JSON.parse((await cluster.cli(["image", "list", "--json"])).stdout)).toEqual([]);
    },
  );
});

describe.skipIf(!HAVE_REGISTRY_TOOLS)("the image puller over its socket", () => {
  it("resolves without downloading layers, copies a re-pull from its built cache, and prunes its caches", async () => {
    const { transport, close } = createUnixTransport(cluster.socket("image-puller"), { peer: "image puller" });
    const puller = createClient(PullerService, transport);
    try {
      const reference = `${registry.host}/tiny/os:v1`;
      const resolved = await puller.resolve({ reference });
      expect(resolved.canonicalReference).toBe(reference);
      expect(resolved.manifestDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
      expect(resolved.platforms).toEqual(["linux/amd64"]);
      expect(resolved.compressedBytes).toBeGreaterThan(0n);

      const bad = await puller
        .resolve({ reference, credentials: [{ registry: registry.host }] })
        .catch((e: unknown) => e);
      expect(bad).toBeInstanceOf(ConnectError);
      expect([(bad as ConnectError).code, (bad as ConnectError).message]).toEqual([
        Code.InvalidArgument,
        expect.stringContaining(`credentials for registry ${registry.host} need a username and password`),
      ]);

      const pullInto = async (name: string) => {
        const stagingDir = join(cluster.stateDir, "images", ".staging", `rpc-${name}`);
        const messages = [];
        for await (const message of puller.pull({ reference, stagingDir })) messages.push(message.event);
        const result = messages.at(-1);
        if (result?.case !== "result") throw new Error(`pull ${name} ended without a result`);
        const copied = messages.some((m) => m.case === "stage" && m.value.message === "built before: copied");
        const rootfs = join(stagingDir, result.value.rootfsFile);
        return { result: result.value, copied, rootfs };
      };
      await pullInto("first");
      // The built image is kept in the background: the next pull waits for it, then copies.
      const second = await pullInto("second");
      expect([second.copied, second.result.downloadedBytes]).toEqual([true, 0n]);
      expect(statSync(second.rootfs).nlink).toBe(1);
      execFileSync("e2fsck", ["-fn", second.rootfs], { stdio: "ignore" });

      const pruned = await puller.pruneCache({ keepDays: 0 });
      expect(pruned.removedBlobs).toBe(3); // manifest, config, one layer
      expect(pruned.freedBytes).toBeGreaterThan(0n);
      expect(readdirSync(join(cluster.stateDir, "cache", "built"))).toEqual([]);
      const third = await pullInto("third");
      expect(third.copied).toBe(false);
      expect(third.result.downloadedBytes).toBeGreaterThan(0n);
    } finally {
      close();
    }
  });
});

describe.skipIf(requireTools("banger kernel and image register", EXT4_TOOLS).length > 0)(
  "banger kernel and image register",
  () => {
    it("imports a kernel from a distribution layout, registers an image that boots it, and protects it while used", async () => {
      const source = join(cluster.dir, "kernel-pkg");
      mkdirSync(join(source, "boot"), { recursive: true });
      mkdirSync(join(source, "lib", "modules", "6.1.0-27-amd64", "kernel"), { recursive: true });
      writeFileSync(
        join(source, "boot", "vmlinuz-6.1.0-27-amd64"),
        Buffer.concat([Buffer.alloc(514), Buffer.from("HdrS")]),
      );
      writeFileSync(join(source, "boot", "initrd.img-6.1.0-27-amd64"), "initrd");
      writeFileSync(join(source, "lib", "modules", "6.1.0-27-amd64", "kernel", "virtio_blk.ko"), "module");

      const imported = await cluster.cli(["kernel", "import", "deb61", source]);
      expect(imported.code, imported.stderr).toBe(0);
      expect(imported.stderr).toMatch(/importing .*kernel-pkg as deb61 \(op-[0-9a-f]{12}\)/);
      const kernels = JSON.parse((await cluster.cli(["kernel", "list", "--json"])).stdout) as Record<string, unknown>[];
      expect(kernels).toMatchObject([{ name: "deb61", version: "6.1.0-27-amd64", hasModules: true, isDefault: true }]);

      const tree = join(cluster.dir, "rootfs-tree");
      mkdirSync(join(tree, "etc"), { recursive: true });
      writeFileSync(join(tree, "etc", "hostname"), "mine\n");
      const rootfs = join(cluster.dir, "rootfs.img");
      execFileSync("mkfs.ext4", ["-q", "-F", "-d", tree, rootfs, "32M"]);
      const registered = await cluster.cli(["image", "register", "mine", "--rootfs", rootfs, "--kernel", "deb61"]);
      expect(registered.code, registered.stderr).toBe(0);
      expect(registered.stdout).toMatch(/^NAME\s+REFERENCE[^\n]*\nmine\s/);
      const shown = await cluster.cli(["image", "show", "mine"]);
      expect(shown.stdout).toMatch(/kernel:\s+deb61\n/);
      expect(shown.stdout).toMatch(/source:\s+registered\n/);

      const notExt4 = await cluster.cli([
        "image",
        "register",
        "junk",
        "--rootfs",
        join(source, "boot", "initrd.img-6.1.0-27-amd64"),
      ]);
      expect([notExt4.code, notExt4.stderr]).toEqual([
        1,
        expect.stringMatching(/is not an ext4 file system image .*\(op-[0-9a-f]{12}\)\n$/),
      ]);

      const refused = await cluster.cli(["kernel", "delete", "deb61"]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain("image mine");
      expect((await cluster.cli(["image", "delete", "mine"])).code).toBe(0);
      expect((await cluster.cli(["kernel", "delete", "deb61"])).code).toBe(0);
      expect(existsSync(join(cluster.stateDir, "kernels", "deb61"))).toBe(false);
      expect(JSON.parse((await cluster.cli(["kernel", "list", "--json"])).stdout)).toEqual([]);
    });
  },
);

describe.skipIf(!HAVE_REGISTRY_TOOLS)("an orchestrator killed in the middle of a pull", () => {
  it("comes back with that operation failed INTERRUPTED at its stage, and no staging files or image left", async () => {
    // Nothing cached: the pull has real work to do when it is cut off.
    const pullerSocket = createUnixTransport(cluster.socket("image-puller"), { peer: "image puller" });
    await createClient(PullerService, pullerSocket.transport).pruneCache({ keepDays: 0 });
    pullerSocket.close();

    const { transport, close } = createUnixTransport(cluster.socket("orchestrator"), { peer: "orchestrator" });
    const { operation } = await createClient(ImageService, transport).pullImage({
      reference: `${registry.host}/tiny/os:v1`,
      name: "cut",
    });
    close();
    const puller = cluster.service("image-puller").child;
    puller.kill("SIGSTOP"); // holds the pull where it is
    try {
      await cluster.kill9("orchestrator");
      await cluster.start("orchestrator");
      const shown = await cluster.cli(["op", "show", operation?.id ?? "", "--json"]);
      expect(shown.code, shown.stderr).toBe(0);
      const op = JSON.parse(shown.stdout) as { state: string; error: { reason: string; stage: string } };
      expect(op.state).toBe("OPERATION_STATE_FAILED");
      expect(op.error.reason).toBe("INTERRUPTED");
      expect(op.error.stage).not.toBe("");
      expect(readdirSync(join(cluster.stateDir, "images", ".staging"))).toEqual([]);
      expect(existsSync(join(cluster.stateDir, "images", "cut"))).toBe(false);
      expect(JSON.parse((await cluster.cli(["image", "list", "--json"])).stdout)).toEqual([]);
      const restarted = cluster.service("orchestrator").logs;
      expect(
        restarted.some((l) => l["msg"] === "operation interrupted by a restart" && l["op_id"] === operation?.id),
      ).toBe(true);
    } finally {
      puller.kill("SIGCONT");
    }
  });
});
