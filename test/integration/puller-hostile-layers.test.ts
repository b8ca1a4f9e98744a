/**
 * Hostile layers against the real image puller process, pushed to a real
 * registry on 127.0.0.1: a hardlink through a symlink out of the tree, a
 * zstd bomb of a few GiB in a few hundred KB, too many entries, a name too
 * long for ext4; and a legitimate 2 GiB sparse file and every name a tar can
 * carry, byte for byte in the image. The puller's peak memory is read from
 * /proc/<pid>/status (VmHWM, reset before each pull), the disk its tree
 * takes is polled with du while it pulls.
 */
import { EXT4_TOOLS, requireTools } from "@banger/common/testing";
import { execFile, execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readSync,
  closeSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { createUnixTransport } from "@banger/common";
import { PullerService, type PullResult } from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import tar from "tar-stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  REGISTRY_TOOLS,
  makeImage,
  skopeoCopy,
  writeOciLayout,
  type FixtureLayer,
} from "../../services/image-puller/test-support/registry/oci-image.js";
import {
  startRegistry,
  type RegistryProcess,
} from "../../services/image-puller/test-support/registry/registry-process.js";
import { ODD_LAYER, oddExpected, seenInImage } from "../../services/image-puller/test-support/layers/odd-names.js";
import { rawTar } from "../../services/image-puller/test-support/layers/raw-tar.js";
import { spawnService, waitUntil, type RunningService } from "./harness.js";

const HAVE_REGISTRY_TOOLS =
  requireTools("hostile layers against the real puller", [...REGISTRY_TOOLS, ...EXT4_TOOLS]).length === 0;

const MIB = 1024 ** 2;
const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

interface BombFile {
  readonly name: string;
  readonly type?: "file" | "symlink" | "link" | "directory";
  readonly linkname?: string;
  /** Bytes of the file; its content is `fill` repeated (zeros when absent), then `tail`. */
  readonly size?: number;
  readonly fill?: string;
  readonly tail?: string;
}

/** A zstd layer streamed through `zstd`: gigabytes of tar in, a few hundred KB out. */
async function zstdLayer(files: readonly BombFile[]): Promise<FixtureLayer> {
  const zstd = spawn("zstd", ["-q", "-c", "-T2"], { stdio: ["pipe", "pipe", "inherit"] });
  const out: Buffer[] = [];
  zstd.stdout.on("data", (c: Buffer) => out.push(c));
  const closed = new Promise<void>((resolve) => zstd.once("close", () => resolve()));
  const hash = createHash("sha256");
  const pack = tar.pack();
  pack.on("data", (data: unknown) => {
    const c = data as Buffer;
    hash.update(c);
    if (!zstd.stdin.write(c)) {
      pack.pause();
      zstd.stdin.once("drain", () => pack.resume());
    }
  });
  pack.on("end", () => zstd.stdin.end());
  for (const file of files) {
    const type = file.type ?? "file";
    if (type !== "file") {
      await new Promise<void>((resolve, reject) =>
        pack.entry({ name: file.name, type, ...(file.linkname ? { linkname: file.linkname } : {}) }, (e) =>
          e ? reject(e) : resolve(),
        ),
      );
      continue;
    }
    const size = file.size ?? 0;
    const tail = Buffer.from(file.tail ?? "");
    const block = Buffer.alloc(MIB, file.fill ?? "\0");
    await new Promise<void>((resolve, reject) => {
      const entry = pack.entry({ name: file.name, size, mode: 0o644 }, (e) => (e ? reject(e) : resolve()));
      void (async () => {
        for (let left = size - tail.length; left > 0; left -= block.length) {
          if (!entry.write(left >= block.length ? block : block.subarray(0, left))) {
            await new Promise<void>((r) => entry.once("drain", () => r()));
          }
        }
        entry.end(tail);
      })();
    });
  }
  pack.finalize();
  await closed;
  const bytes = Buffer.concat(out);
  return {
    mediaType: "application/vnd.oci.image.layer.v1.tar+zstd",
    digest: sha256(bytes),
    size: bytes.length,
    bytes,
    diffId: `sha256:${hash.digest("hex")}`,
  };
}

/** A gzip layer of `tar` as it is. */
function gzipLayer(tarBytes: Buffer): FixtureLayer {
  const bytes = gzipSync(tarBytes);
  return {
    mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
    digest: sha256(bytes),
    size: bytes.length,
    bytes,
    diffId: sha256(tarBytes),
  };
}

let work: string;
let registry: RegistryProcess;
const pullers: RunningService[] = [];

interface Puller {
  readonly svc: RunningService;
  readonly stateDir: string;
  readonly scratch: string;
  readonly client: ReturnType<typeof createClient<typeof PullerService>>;
  readonly close: () => void;
}

async function startPuller(name: string, flags: readonly string[]): Promise<Puller> {
  const dir = join(work, name);
  const stateDir = join(dir, "state");
  const scratch = join(dir, "scratch");
  for (const d of [stateDir, scratch, join(dir, "run")]) mkdirSync(d, { recursive: true });
  const socket = join(dir, "run", "puller.sock");
  const svc = spawnService("image-puller", [
    "--runtime-dir",
    join(dir, "run"),
    "--state-dir",
    stateDir,
    "--scratch-dir",
    scratch,
    "--socket",
    socket,
    ...flags,
  ]);
  pullers.push(svc);
  await waitUntil(() => svc.logs.some((l) => l["msg"] === "listening"), svc, `${name} to listen`);
  const { transport, close } = createUnixTransport(socket, { peer: "image puller" });
  return { svc, stateDir, scratch, client: createClient(PullerService, transport), close };
}

beforeAll(async () => {
  if (!HAVE_REGISTRY_TOOLS) return;
  work = mkdtempSync(join(tmpdir(), "banger-hostile-layers-"));
  registry = await startRegistry(join(work, "registry"));
});
afterAll(async () => {
  for (const svc of pullers) {
    svc.child.kill("SIGTERM");
    await svc.exited;
  }
  if (!HAVE_REGISTRY_TOOLS) return;
  await registry.stop();
  rmSync(work, { recursive: true, force: true });
});

async function push(tag: string, layers: FixtureLayer[]): Promise<string> {
  const layout = join(work, `layout-${tag}`);
  writeOciLayout(layout, { [tag]: makeImage("amd64", layers) });
  await skopeoCopy(layout, tag, `${registry.host}/hostile/img:${tag}`);
  rmSync(layout, { recursive: true, force: true });
  return `${registry.host}/hostile/img:${tag}`;
}

const peakRssBytes = (pid: number) =>
  Number(/VmHWM:\s+(\d+) kB/.exec(execFileSync("cat", [`/proc/${pid}/status`], { encoding: "utf8" }))?.[1]) * 1024;

/** Bytes on disk (st_blocks) under `dirs`, as du counts them. */
async function diskBytes(dirs: readonly string[]): Promise<number> {
  const { stdout } = await promisify(execFile)("du", ["-s", "-B1", "-c", ...dirs]).catch(() => ({
    stdout: "0\ttotal",
  }));
  return Number(/(\d+)\s+total/.exec(stdout)?.[1] ?? 0);
}

/**
 * One pull: its result or its error, the puller's peak RSS during it and the
 * most disk its tree and staging directory took.
 */
async function measuredPull(puller: Puller, reference: string, name: string) {
  const pid = puller.svc.child.pid ?? 0;
  writeFileSync(`/proc/${pid}/clear_refs`, "5"); // resets VmHWM to the current RSS
  const stagingDir = join(puller.stateDir, "images", ".staging", name);
  let maxDisk = 0;
  let polling = true;
  const poller = (async () => {
    while (polling) {
      maxDisk = Math.max(maxDisk, await diskBytes([puller.scratch, join(puller.stateDir, "images")]));
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  let result: PullResult | undefined;
  let error: ConnectError | undefined;
  try {
    for await (const message of puller.client.pull({ reference, stagingDir })) {
      if (message.event.case === "result") result = message.event.value;
    }
  } catch (e) {
    error = ConnectError.from(e);
  } finally {
    polling = false;
    await poller;
  }
  const peakRss = peakRssBytes(pid);
  if (process.env["DEBUG_PULL"]) console.log(name, { peakRssMib: peakRss / MIB, maxDiskMib: maxDisk / MIB });
  return { result, error, stagingDir, peakRss, maxDisk };
}

describe.skipIf(!HAVE_REGISTRY_TOOLS || process.getuid?.() !== 0)("hostile layers against the real puller", () => {
  let limited: Puller;
  let defaults: Puller;
  beforeAll(async () => {
    limited = await startPuller("limited", ["--max-image-mib", "1000", "--max-image-entries", "100"]);
    defaults = await startPuller("defaults", []);
  });
  afterAll(() => {
    limited.close();
    defaults.close();
  });

  it("refuses a hardlink through a symlink to a directory outside the tree, linking nothing", async () => {
    // The owner's ~/.ssh on the file system of the puller's tree, so link(2) could succeed.
    const ssh = join(work, "home", "owner", ".ssh");
    mkdirSync(ssh, { recursive: true });
    const secret = join(ssh, "id_ed25519");
    writeFileSync(secret, "-----BEGIN OPENSSH PRIVATE KEY-----\n", { mode: 0o600 });
    const layer = await zstdLayer([
      { name: "a", type: "symlink", linkname: ssh },
      { name: "root/", type: "directory" },
      { name: "root/key", type: "link", linkname: "a/id_ed25519" },
    ]);
    const reference = await push("sshkey", [layer]);
    for (let attempt = 0; attempt < 5; attempt++) {
      const { result, error, stagingDir } = await measuredPull(defaults, reference, `sshkey-${attempt}`);
      expect(result).toBeUndefined();
      expect(error?.code).toBe(Code.InvalidArgument);
      expect(error?.rawMessage).toMatch(/hostile layer entry "root\/key": hardlink to a\/id_ed25519/);
      expect(statSync(secret).nlink).toBe(1);
      expect(readdirSync(stagingDir)).toEqual([]);
      expect(readdirSync(defaults.scratch)).toEqual([]);
    }
    expect(defaults.svc.child.exitCode).toBeNull();
  });

  it("refuses a zstd bomb at the image's byte limit, with bounded memory and disk, naming the limit", async () => {
    // 2.75 GiB of tar: zeros (holes) and a repeating pattern (written), in ~0.3 MB of zstd.
    const files: BombFile[] = [];
    for (let i = 0; i < 4; i++) {
      files.push({ name: `zeros-${i}`, size: 512 * MIB });
      if (i < 3) files.push({ name: `pattern-${i}`, size: 256 * MIB, fill: "banger bomb!\n" });
    }
    const layer = await zstdLayer(files);
    if (process.env["DEBUG_PULL"]) console.log("bomb layer bytes", layer.size);
    expect(layer.size).toBeLessThan(1 * MIB);
    const reference = await push("bomb", [layer]);
    const { result, error, stagingDir, peakRss, maxDisk } = await measuredPull(limited, reference, "bomb");
    expect(result).toBeUndefined();
    expect(error?.code).toBe(Code.ResourceExhausted);
    expect(error?.rawMessage).toContain("more than 1048576000 bytes (1000 MiB)");
    expect(error?.rawMessage).toContain("--max-image-mib");
    expect(peakRss).toBeLessThan(256 * MIB);
    expect(maxDisk).toBeLessThan(1024 * MIB);
    expect(readdirSync(stagingDir)).toEqual([]);
    expect(readdirSync(limited.scratch)).toEqual([]);
  }, 180_000);

  it("refuses a layer with more entries than the image may hold, naming the limit", async () => {
    const files = Array.from({ length: 150 }, (_, i) => ({ name: `f/${i}`, size: 1, fill: "x" }));
    const reference = await push("entries", [await zstdLayer(files)]);
    const { result, error, stagingDir } = await measuredPull(limited, reference, "entries");
    expect(result).toBeUndefined();
    expect(error?.code).toBe(Code.ResourceExhausted);
    expect(error?.rawMessage).toMatch(/more than 100 entries, the limit of the image puller \(--max-image-entries\)/);
    expect(readdirSync(stagingDir)).toEqual([]);
  });

  it("keeps every name a tar can carry byte for byte, with owners, modes, mtimes, links, devices and capabilities", async () => {
    // Backslashes (systemd's escaped unit names), quotes, spaces, newlines, a leading dash, UTF-8 and
    // non-UTF-8 bytes (in the header and in pax records), a 255-byte name, a directory of such a name.
    const reference = await push("odd-names", [gzipLayer(rawTar(ODD_LAYER))]);
    const { result, error, stagingDir } = await measuredPull(defaults, reference, "odd-names");
    expect(error).toBeUndefined();
    const image = join(stagingDir, result?.rootfsFile ?? "");
    execFileSync("e2fsck", ["-fn", image], { stdio: "pipe" });
    expect(seenInImage(image)).toEqual(oddExpected());
  });

  it("refuses a name longer than ext4 holds, naming the entry", async () => {
    const long = `etc/ok/${"x".repeat(256)}`;
    const reference = await push("long-name", [
      gzipLayer(rawTar([{ name: "etc/ok/fine", content: "" }, { name: long }])),
    ]);
    const { result, error, stagingDir } = await measuredPull(defaults, reference, "long-name");
    expect(result).toBeUndefined();
    expect(error?.code).toBe(Code.InvalidArgument);
    expect(error?.rawMessage).toContain(
      `hostile layer entry "etc/ok/${"x".repeat(193)}": a name of 256 bytes, longer than the 255 ext4 can hold`,
    );
    expect(readdirSync(stagingDir)).toEqual([]);
  });

  it("builds a legitimate 2 GiB sparse file with the default limits: sparse on disk, right in the image", async () => {
    const size = 2048 * MIB;
    const tail = "data at the very end\n";
    const reference = await push("sparse", [await zstdLayer([{ name: "var/big.img", size, tail }])]);
    const { result, error, stagingDir, peakRss, maxDisk } = await measuredPull(defaults, reference, "sparse");
    expect(error).toBeUndefined();
    expect(peakRss).toBeLessThan(256 * MIB);
    expect(maxDisk).toBeLessThan(256 * MIB); // the tree's 2 GiB file is holes but for its last block
    const image = join(stagingDir, result?.rootfsFile ?? "");
    expect(statSync(image).blocks * 512).toBeLessThan(256 * MIB);
    const stat = execFileSync("debugfs", ["-R", "stat /var/big.img", image], { encoding: "utf8", stdio: "pipe" });
    expect(stat).toMatch(new RegExp(`Size: ${size}\\b`));
    // The last block of the file, read from the image where debugfs says it is.
    const lastBlock = size / 4096 - 1;
    const bmap = execFileSync("debugfs", ["-R", `bmap /var/big.img ${lastBlock}`, image], {
      encoding: "utf8",
      stdio: "pipe",
    });
    const physical = Number(bmap.trim());
    expect(physical).toBeGreaterThan(0);
    const block = Buffer.alloc(4096);
    const fd = openSync(image, "r");
    readSync(fd, block, 0, 4096, physical * 4096);
    closeSync(fd);
    expect(block.subarray(4096 - tail.length).toString()).toBe(tail);
    expect(block.subarray(0, 4096 - tail.length).every((b) => b === 0)).toBe(true);
  }, 180_000);
});
