import { execFileSync } from "node:child_process";
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Writable } from "node:stream";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnavailableError,
  createLogger,
  runWithOpId,
} from "@banger/common";
import { EXT4_TOOLS, requireTools } from "@banger/common/testing";
import { describe, expect, it } from "vitest";
import { insertKernel, insertVm } from "../store/index.js";
import { kernel, useStore, useTempDir, vm } from "../../test-support/store.js";
import {
  createImageCatalog,
  type CredentialLookup,
  type PullerPort,
  type PullOutcome,
  type PullRequestPlain,
} from "./images.js";
import { createOperations } from "./operations.js";

const store = useStore();
const tempDir = useTempDir();
const logger = createLogger({
  service: "orchestrator",
  destination: new Writable({ write: (_c, _e, done) => done() }),
});
const identity = { version: "test", pid: 1, uid: 1000, gid: 1000, privilegesOk: true, privilegesDetail: "" };

/**
 * A puller that reports the real stage sequence, writes a small rootfs into
 * the staging directory, and waits `delayMs` in its layers stage (or fails
 * there when told to).
 */
function scriptedPuller(
  options: {
    delayMs?: number;
    failAt?: string;
    down?: boolean;
    requests?: PullRequestPlain[];
    /** The puller's uid, when it is another user than this process (as under the installed units). */
    uid?: number;
    /** What every pull fails with at its resolve stage (a registry's answer, or none). */
    pullError?: Error;
    /** How many times tiny was built. */
    tinyBuilds?: { count: number };
  } = {},
): PullerPort {
  return {
    identify: () =>
      options.down
        ? Promise.reject(new UnavailableError("image puller is unavailable at /x.sock"))
        : Promise.resolve(identity),
    pruneCache: () => Promise.resolve({ removedBlobs: 0, freedBytes: 0 }),
    async buildTiny(request, _scope, onEvent) {
      if (options.tinyBuilds) options.tinyBuilds.count += 1;
      for (const stage of ["layers", "mkfs", "ownership", "work-seed", "verify"]) {
        await onEvent({ kind: "stage", name: stage, done: false, message: "" });
        await onEvent({ kind: "stage", name: stage, done: true, message: "" });
      }
      writeFileSync(join(request.stagingDir, "rootfs.ext4"), "tiny");
      writeFileSync(join(request.stagingDir, "work-seed.ext4"), "seed");
      return {
        manifestDigest: `sha256:${"7".repeat(64)}`,
        platform: "linux/amd64",
        rootfsFile: "rootfs.ext4",
        rootfsBytes: 4,
        workSeedFile: "work-seed.ext4",
        workSeedBytes: 4,
        config: { entrypoint: [], cmd: ["/bin/sh"], env: [], user: "", workingDir: "" },
        canonicalReference: "",
      };
    },
    async pull(request, _scope, onEvent) {
      options.requests?.push(request);
      if (options.pullError) {
        await onEvent({ kind: "stage", name: "resolve", done: false, message: "" });
        throw options.pullError;
      }
      for (const stage of ["resolve", "layers", "mkfs", "ownership", "work-seed", "verify"]) {
        await onEvent({ kind: "stage", name: stage, done: false, message: "" });
        if (stage === "layers") await new Promise((r) => setTimeout(r, options.delayMs ?? 0));
        if (stage === options.failAt)
          throw new FailedPreconditionError("layer digest mismatch", { receivedReason: "DIFF_ID_MISMATCH" });
        await onEvent({ kind: "stage", name: stage, done: true, message: "" });
      }
      writeFileSync(join(request.stagingDir, "rootfs.ext4"), "ext4");
      if (options.uid !== undefined) chownSync(join(request.stagingDir, "rootfs.ext4"), options.uid, options.uid);
      const outcome: PullOutcome = {
        manifestDigest: `sha256:${"c".repeat(64)}`,
        platform: "linux/amd64",
        rootfsFile: "rootfs.ext4",
        rootfsBytes: 4,
        workSeedFile: "",
        workSeedBytes: 0,
        config: { entrypoint: [], cmd: ["sh"], env: [], user: "", workingDir: "" },
        canonicalReference: `docker.io/library/${request.reference}`,
      };
      return outcome;
    },
  };
}

function catalog(puller: PullerPort, credentials?: CredentialLookup) {
  const operations = createOperations({ db: store().db, logger });
  return {
    operations,
    images: createImageCatalog({
      db: store().db,
      stateDir: tempDir(),
      puller,
      operations,
      logger,
      pullDefaults: { insecureRegistries: ["registry.lan:5000"], minRootfsMib: 2048 },
      ...(credentials ? { credentials } : {}),
    }),
  };
}

describe("image pulls", () => {
  it("publish the puller's files atomically and record the image, with every stage in the operation", async () => {
    const { operations, images } = catalog(scriptedPuller());
    const op = await runWithOpId("op-0000000000aa", () =>
      images.pull(
        { reference: "alpine:3.20", name: "", platform: "", minRootfsMib: 0 },
        { signal: new AbortController().signal },
      ),
    );
    await operations.settled();
    const done = await operations.get(op.id);
    expect(done.state).toBe("succeeded");
    expect(done.target).toBe("alpine");
    expect(done.stages.map((s) => [s.name, s.state])).toEqual(
      ["resolve", "layers", "mkfs", "ownership", "work-seed", "verify", "publish"].map((n) => [n, "done"]),
    );
    expect(done.result).toMatchObject({
      kind: "image",
      image: { name: "alpine", manifestDigest: `sha256:${"c".repeat(64)}` },
    });
    expect(readdirSync(join(tempDir(), "images", "alpine"))).toEqual(["rootfs.ext4"]);
    expect(readdirSync(join(tempDir(), "images", ".staging"))).toEqual([]);
    expect((await images.get("alpine")).reference).toBe("docker.io/library/alpine:3.20");
  });

  it.skipIf(process.getuid?.() !== 0)(
    "publish the orchestrator's own copy of a rootfs another user built (the helper opens only the owner's files)",
    async () => {
      const { operations, images } = catalog(scriptedPuller({ uid: 1000 }));
      const op = await images.pull(
        { reference: "alpine:3.20", name: "", platform: "", minRootfsMib: 0 },
        { signal: new AbortController().signal },
      );
      await operations.settled();
      expect((await operations.get(op.id)).state).toBe("succeeded");
      const rootfs = join(tempDir(), "images", "alpine", "rootfs.ext4");
      expect(statSync(rootfs).uid).toBe(process.getuid?.());
      expect(statSync(rootfs).mode & 0o777).toBe(0o640);
      expect(readFileSync(rootfs, "utf8")).toBe("ext4");
      expect(readdirSync(join(tempDir(), "images", "alpine"))).toEqual(["rootfs.ext4"]);
    },
  );

  it("hand the puller the owner's credentials for that registry only, and the configured defaults", async () => {
    const requests: PullRequestPlain[] = [];
    const asked: string[] = [];
    const { operations, images } = catalog(scriptedPuller({ requests }), (registry) => {
      asked.push(registry);
      return Promise.resolve(registry === "ghcr.io" ? { kind: "basic", username: "me", password: "pat" } : undefined);
    });
    const pull = (reference: string, minRootfsMib = 0) =>
      images.pull({ reference, name: "", platform: "", minRootfsMib }, { signal: new AbortController().signal });
    await pull("ghcr.io/org/tool:1");
    await pull("debian", 512);
    await operations.settled();
    // The two pulls run at once: compare in a fixed order.
    expect(asked.sort()).toEqual(["ghcr.io", "registry-1.docker.io"]);
    requests.sort((a, b) => b.reference.localeCompare(a.reference));
    expect(requests.map((r) => [r.reference, r.credentials, r.minRootfsMib, r.insecureRegistries])).toEqual([
      [
        "ghcr.io/org/tool:1",
        [{ registry: "ghcr.io", username: "me", password: "pat", identityToken: "" }],
        2048,
        ["registry.lan:5000"],
      ],
      ["docker.io/library/debian:bookworm", [], 512, ["registry.lan:5000"]],
    ]);
  });

  it("refuse a malformed reference at once, with no operation", async () => {
    const { operations, images } = catalog(scriptedPuller());
    const error = await images
      .pull(
        { reference: "UPPER/Case:x", name: "x", platform: "", minRootfsMib: 0 },
        { signal: new AbortController().signal },
      )
      .catch((e: unknown) => e);
    expect((error as { reason?: string }).reason).toBe("INVALID_REFERENCE");
    expect(await operations.list({ limit: 10 })).toEqual([]);
  });

  it("run in parallel for different images", async () => {
    const { operations, images } = catalog(scriptedPuller({ delayMs: 150 }));
    const scope = { signal: new AbortController().signal };
    const a = await runWithOpId("op-0000000000a1", () =>
      images.pull({ reference: "alpine", name: "", platform: "", minRootfsMib: 0 }, scope),
    );
    const b = await runWithOpId("op-0000000000b2", () =>
      images.pull({ reference: "debian", name: "", platform: "", minRootfsMib: 0 }, scope),
    );
    await operations.settled();
    const layers = async (id: string) => (await operations.get(id)).stages.find((s) => s.name === "layers");
    const [la, lb] = [await layers(a.id), await layers(b.id)];
    // Both were in their slow stage at the same time.
    expect(la?.startedAt && lb?.endedAt && la.startedAt < lb.endedAt).toBe(true);
    expect(lb?.startedAt && la?.endedAt && lb.startedAt < la.endedAt).toBe(true);
    expect((await images.list()).map((i) => i.name)).toEqual(["alpine", "debian"]);
  });

  it("racing for one name: exactly one wins, the other gets IMAGE_NAME_TAKEN", async () => {
    const { operations, images } = catalog(scriptedPuller({ delayMs: 50 }));
    const scope = { signal: new AbortController().signal };
    const outcomes = await Promise.allSettled(
      ["op-0000000000c1", "op-0000000000c2"].map((id) =>
        runWithOpId(id, () =>
          images.pull({ reference: "registry.local/x:1", name: "x", platform: "", minRootfsMib: 0 }, scope),
        ),
      ),
    );
    await operations.settled();
    const records = await Promise.all(
      outcomes.filter((o) => o.status === "fulfilled").map((o) => operations.get(o.value.id)),
    );
    const refusedAtStart = outcomes.filter((o) => o.status === "rejected").map((o) => o.reason as Error);
    const states = records.map((r) => r.state).sort();
    const takenInOperation = records.filter((r) => r.error?.reason === "IMAGE_NAME_TAKEN");
    expect(states.filter((s) => s === "succeeded")).toHaveLength(1);
    expect(takenInOperation.length + refusedAtStart.filter((e) => e instanceof AlreadyExistsError).length).toBe(1);
    expect(readdirSync(join(tempDir(), "images")).sort()).toEqual([".staging", "x"]);
    expect(readdirSync(join(tempDir(), "images", ".staging"))).toEqual([]);
  });

  it("a failure in the puller fails the operation at that stage and leaves no files", async () => {
    const { operations, images } = catalog(scriptedPuller({ failAt: "layers" }));
    const op = await runWithOpId("op-0000000000d1", () =>
      images.pull(
        { reference: "alpine", name: "", platform: "", minRootfsMib: 0 },
        { signal: new AbortController().signal },
      ),
    );
    await operations.settled();
    expect(await operations.get(op.id)).toMatchObject({
      state: "failed",
      error: { reason: "DIFF_ID_MISMATCH", stage: "layers" },
    });
    expect(existsSync(join(tempDir(), "images", "alpine"))).toBe(false);
    expect(readdirSync(join(tempDir(), "images", ".staging"))).toEqual([]);
    await expect(images.get("alpine")).rejects.toThrow(/does not exist/);
  });

  it("refuses at once, with no operation, when the puller is down", async () => {
    const { operations, images } = catalog(scriptedPuller({ down: true }));
    await expect(
      images.pull(
        { reference: "alpine", name: "", platform: "", minRootfsMib: 0 },
        { signal: new AbortController().signal },
      ),
    ).rejects.toBeInstanceOf(UnavailableError);
    expect(await operations.list({ limit: 10 })).toEqual([]);
  });

  it("deletes idempotently, and never an image a VM uses", async () => {
    const { operations, images } = catalog(scriptedPuller());
    await runWithOpId("op-0000000000e1", () =>
      images.pull(
        { reference: "debian", name: "", platform: "", minRootfsMib: 0 },
        { signal: new AbortController().signal },
      ),
    );
    await operations.settled();
    await insertKernel(store().db, kernel());
    await insertVm(store().db, vm({ imageName: "debian" }));
    await expect(images.delete("debian")).rejects.toThrow(/used by box/);
    expect(existsSync(join(tempDir(), "images", "debian", "rootfs.ext4"))).toBe(true);
    await store().db.deleteFrom("vms").execute();
    expect(await images.delete("debian")).toEqual({ existed: true });
    expect(existsSync(join(tempDir(), "images", "debian"))).toBe(false);
    expect(await images.delete("debian")).toEqual({ existed: false });
  });
});

describe("image pull --replace", () => {
  const scope = { signal: new AbortController().signal };
  const pullDebian = (images: ReturnType<typeof catalog>["images"], replace: boolean) =>
    images.pull({ reference: "debian", name: "", platform: "", minRootfsMib: 0, replace }, scope);

  it("refuses a VM's image at once, and when a VM is made from it during the pull, keeps the old one whole", async () => {
    const { operations, images } = catalog(scriptedPuller({ delayMs: 300 }));
    await runWithOpId("op-00000000f001", () => pullDebian(images, false));
    await operations.settled();
    const before = await images.get("debian");
    await insertKernel(store().db, kernel());
    await insertVm(store().db, vm({ imageName: "debian" }));
    const refused = await pullDebian(images, true).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(FailedPreconditionError);
    expect((refused as FailedPreconditionError).reason).toBe("IMAGE_IN_USE");
    expect((await operations.list({ limit: 10 })).length).toBe(1); // no operation for it

    await store().db.deleteFrom("vms").execute();
    const op = await runWithOpId("op-00000000f002", () => pullDebian(images, true));
    await insertVm(store().db, vm({ imageName: "debian" })); // while the pull downloads
    await operations.settled();
    const failed = await operations.get(op.id);
    expect([failed.state, failed.error?.reason]).toEqual(["failed", "IMAGE_IN_USE"]);
    expect(await images.get("debian")).toEqual({ ...before, usedBy: ["box"] });
    expect(readdirSync(join(tempDir(), "images", "debian"))).toEqual(["rootfs.ext4"]);
    expect(readdirSync(join(tempDir(), "images", ".staging"))).toEqual([]);

    await store().db.deleteFrom("vms").execute();
    const replaced = await runWithOpId("op-00000000f003", () => pullDebian(images, true));
    await operations.settled();
    expect((await operations.get(replaced.id)).state).toBe("succeeded");
    expect((await images.get("debian")).createdAt).not.toEqual(before.createdAt);
    expect(readdirSync(join(tempDir(), "images")).sort()).toEqual([".staging", "debian"]);
    expect(readdirSync(join(tempDir(), "images", ".staging"))).toEqual([]);
  });
});

describe("the built-in image tiny", () => {
  const scope = { signal: new AbortController().signal };
  /** A create's resolve-image stage for the default image `name`: the image it got, and the stage as recorded. */
  let ops = 0;
  async function resolveDefault(puller: PullerPort, name = "debian") {
    const { operations, images } = catalog(puller);
    const op = await runWithOpId(`op-00000000d0${(ops++).toString(16).padStart(2, "0")}`, () =>
      operations.start("create-vm", "box", async (ctx) => {
        const image = await ctx.stage("resolve-image", () => images.ensureDefault(name, ctx, "resolve-image", scope));
        return { kind: "image", image };
      }),
    );
    await operations.settled();
    return { images, done: await operations.get(op.id) };
  }

  it("`image pull tiny` builds it in the puller with no registry, as a built-in image", async () => {
    const tinyBuilds = { count: 0 };
    const requests: PullRequestPlain[] = [];
    const { operations, images } = catalog(scriptedPuller({ tinyBuilds, requests }));
    const op = await images.pull({ reference: "tiny", name: "", platform: "", minRootfsMib: 0 }, scope);
    await operations.settled();
    const done = await operations.get(op.id);
    expect(done.state).toBe("succeeded");
    expect(done.stages.map((s) => s.name)).toEqual(["layers", "mkfs", "ownership", "work-seed", "verify", "publish"]);
    expect([tinyBuilds.count, requests.length]).toEqual([1, 0]);
    expect(await images.get("tiny")).toMatchObject({ name: "tiny", source: "builtin", reference: null });
    expect(readFileSync(join(tempDir(), "images", "tiny", "rootfs.ext4"), "utf8")).toBe("tiny");
  });

  it("serves when the default image's registry is unreachable, and the stage says so and why", async () => {
    const tinyBuilds = { count: 0 };
    const unreachable = new UnavailableError(
      "registry host registry-1.docker.io is unreachable: getaddrinfo EAI_AGAIN registry-1.docker.io",
      { reason: "REGISTRY_UNREACHABLE" },
    );
    const { images, done } = await resolveDefault(scriptedPuller({ pullError: unreachable, tinyBuilds }));
    expect(done.state).toBe("succeeded");
    expect(done.result).toMatchObject({ kind: "image", image: { name: "tiny", source: "builtin" } });
    expect(done.stages).toMatchObject([{ name: "resolve-image", state: "done" }]);
    expect(done.stages[0]?.message).toBe(
      "the default image debian could not be pulled (registry host registry-1.docker.io is unreachable: getaddrinfo " +
        "EAI_AGAIN registry-1.docker.io): using the built-in image tiny instead (busybox and banger's guest kit, built here)",
    );
    expect(tinyBuilds.count).toBe(1);
    expect((await images.list()).map((i) => i.name)).toEqual(["tiny"]);
    // Once built, it is local: the next offline create takes it without building it again.
    await resolveDefault(scriptedPuller({ pullError: unreachable, tinyBuilds }));
    expect(tinyBuilds.count).toBe(1);
  });

  it.each([
    [
      "refuses the owner's login",
      new PermissionDeniedError("unauthorized", { receivedReason: "REGISTRY_UNAUTHORIZED" }),
    ],
    ["has no such image", new NotFoundError("manifest unknown", { receivedReason: "MANIFEST_NOT_FOUND" })],
    ["rate-limits", new ResourceExhaustedError("too many requests", { receivedReason: "REGISTRY_RATE_LIMITED" })],
    ["answers with an error", new UnavailableError("503 from the registry", { receivedReason: "REGISTRY_ERROR" })],
    ["sends a truncated blob", new UnavailableError("blob ended early", { receivedReason: "BLOB_TRUNCATED" })],
  ])("does not stand in when the registry answers but %s: the pull's error fails the stage", async (_what, error) => {
    const tinyBuilds = { count: 0 };
    const { images, done } = await resolveDefault(scriptedPuller({ pullError: error, tinyBuilds }));
    expect(done.state).toBe("failed");
    expect(done.error).toMatchObject({ reason: error.reason, stage: "resolve-image" });
    expect(tinyBuilds.count).toBe(0);
    expect(await images.list()).toEqual([]);
  });

  it("does not stand in when the puller itself is down", async () => {
    const tinyBuilds = { count: 0 };
    const { done } = await resolveDefault(scriptedPuller({ down: true, tinyBuilds }));
    expect(done.state).toBe("failed");
    expect(tinyBuilds.count).toBe(0);
  });
});

describe.skipIf(requireTools("image register", EXT4_TOOLS).length > 0)("image register", () => {
  /** A 64 MiB ext4 image holding one file, mostly holes. */
  function ext4(name: string, file: string): string {
    const path = join(tempDir(), name);
    const tree = join(tempDir(), `${name}.tree`);
    mkdirSync(tree);
    writeFileSync(join(tree, "hello"), file);
    execFileSync("mkfs.ext4", ["-q", "-F", "-d", tree, path, "64M"]);
    return path;
  }
  const register = (images: ReturnType<typeof catalog>["images"], extra: Record<string, string> = {}) =>
    images.register({ name: "mine", rootfsPath: "", workSeedPath: "", defaultKernel: "", ...extra });

  it("copies local ext4 files into the catalog (holes kept) and records the image", async () => {
    const { images } = catalog(scriptedPuller());
    await insertKernel(store().db, kernel({ name: "k1" }));
    const rootfs = ext4("root.img", "root");
    const seed = ext4("seed.img", "seed");
    const image = await register(images, { rootfsPath: rootfs, workSeedPath: seed, defaultKernel: "k1" });
    expect(image).toMatchObject({
      name: "mine",
      source: "registered",
      reference: null,
      rootfsBytes: 64 * 1048576,
      workSeedBytes: 64 * 1048576,
      defaultKernel: "k1",
    });
    const stored = join(tempDir(), "images", "mine");
    expect(readdirSync(stored).sort()).toEqual(["rootfs.ext4", "work-seed.ext4"]);
    expect(readFileSync(join(stored, "rootfs.ext4")).equals(readFileSync(rootfs))).toBe(true);
    expect(statSync(join(stored, "rootfs.ext4")).blocks * 512).toBeLessThan(16 * 1048576);
    expect(readdirSync(join(tempDir(), "images", ".staging"))).toEqual([]);
    expect((await images.get("mine")).usedBy).toEqual([]);
    // The kernel is now in use by the image.
    await expect(store().db.deleteFrom("kernels").execute()).rejects.toThrow();
  });

  it.each([
    ["a relative path", { rootfsPath: "root.img" }, "INVALID_PATH"],
    ["a missing file", { rootfsPath: "/nonexistent/root.img" }, "PATH_NOT_FOUND"],
    ["a file that is not ext4", { rootfsPath: "NOT_EXT4_FILE" }, "NOT_EXT4"],
    ["a directory", { rootfsPath: "DIRECTORY" }, "NOT_EXT4"],
    ["an unknown kernel", { defaultKernel: "nope" }, "KERNEL_NOT_FOUND"],
  ])("refuses %s, changing nothing", async (_what, extra, reason) => {
    const { images } = catalog(scriptedPuller());
    const junk = join(tempDir(), "junk.img");
    writeFileSync(junk, Buffer.alloc(4096, 1));
    const fields = { rootfsPath: ext4("ok.img", "ok"), ...extra };
    if (fields.rootfsPath === "NOT_EXT4_FILE") fields.rootfsPath = junk;
    if (fields.rootfsPath === "DIRECTORY") fields.rootfsPath = tempDir();
    const error = await register(images, fields).catch((e: unknown) => e);
    expect((error as { reason?: string }).reason).toBe(reason);
    expect(await images.list()).toEqual([]);
    expect(existsSync(join(tempDir(), "images", "mine"))).toBe(false);
  });

  it("refuses a name already taken (IMAGE_NAME_TAKEN), keeping the first", async () => {
    const { images } = catalog(scriptedPuller());
    await register(images, { rootfsPath: ext4("a.img", "first") });
    const error = await register(images, { rootfsPath: ext4("b.img", "second") }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AlreadyExistsError);
    expect(
      readFileSync(join(tempDir(), "images", "mine", "rootfs.ext4")).equals(readFileSync(join(tempDir(), "a.img"))),
    ).toBe(true);
  });
});
