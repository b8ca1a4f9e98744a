import { Writable } from "node:stream";
import { FailedPreconditionError, UnavailableError, createLogger } from "@banger/common";
import { describe, expect, it } from "vitest";
import { T0, image, kernel, useStore } from "../../test-support/store.js";
import { getOperation, insertOperation, listOperations, updateOperation } from "../store/index.js";
import type { ImageView } from "./image/model.js";
import type { KernelView } from "./kernel/model.js";
import { createPruner, type PrunerDeps } from "./prune.js";

const DAY = 24 * 60 * 60 * 1000;
const NOW = new Date(T0.getTime() + 100 * DAY);
const logger = createLogger({
  service: "orchestrator",
  destination: new Writable({ write: (_c, _e, done) => done() }),
});
const store = useStore();

/** An operation created and (unless `running`) ended `daysAgo` before NOW. */
async function operation(id: string, daysAgo: number, ended: "succeeded" | "failed" | "running") {
  const when = new Date(NOW.getTime() - daysAgo * DAY);
  await insertOperation(store().db, { id, kind: "create-vm", target: id, createdAt: when });
  await updateOperation(store().db, id, { updatedAt: when, state: ended });
}

/** Catalogs that list what they are given and delete it from the list (or refuse, as a create in between would). */
function catalogs(images: ImageView[], kernels: KernelView[], refuse: readonly string[] = []) {
  const deleted: string[] = [];
  const remove =
    <T extends { name: string }>(list: T[], kind: string) =>
    (name: string) => {
      if (refuse.includes(name)) {
        return Promise.reject(new FailedPreconditionError(`${kind} ${name} is used by vm:late`));
      }
      list.splice(
        list.findIndex((item) => item.name === name),
        1,
      );
      deleted.push(`${kind}:${name}`);
      // Deleting an image frees its kernel, as the store's references do.
      kernels.forEach((k, i) => (kernels[i] = { ...k, usedBy: k.usedBy.filter((u) => u !== `${kind}:${name}`) }));
      return Promise.resolve({ existed: true });
    };
  const deps: Pick<PrunerDeps, "images" | "kernels"> = {
    images: { list: () => Promise.resolve([...images]), delete: remove(images, "image") },
    kernels: { list: () => Promise.resolve([...kernels]), delete: remove(kernels, "kernel") },
  };
  return { deps, deleted };
}

function pruner(extra: Pick<PrunerDeps, "images" | "kernels">, puller?: PrunerDeps["puller"]) {
  return createPruner({
    db: store().db,
    retentionDays: 30,
    logger,
    now: () => NOW,
    puller: puller ?? { pruneCache: () => Promise.resolve({ removedBlobs: 3, freedBytes: 5 * 1048576 }) },
    ...extra,
  });
}

const scope = { signal: new AbortController().signal };

describe("prune", () => {
  it("removes operations that ended before the retention, never one under way however old", async () => {
    await operation("op-old-ok", 45, "succeeded");
    await operation("op-old-failed", 31, "failed");
    await operation("op-recent", 29, "succeeded");
    await operation("op-old-running", 90, "running");
    const { deps } = catalogs([], []);

    expect(await pruner(deps).pruneOperations()).toBe(2);

    const left = (await listOperations(store().db, { limit: 10 })).map((op) => op.id).sort();
    expect(left).toEqual(["op-old-running", "op-recent"]);
    expect(await getOperation(store().db, "op-old-ok")).toBeUndefined();
    expect(await pruner(deps).pruneOperations()).toBe(0);
  });

  it("asks the puller to empty its cache, and reports a puller that is down instead of failing", async () => {
    const { deps } = catalogs([], []);
    const report = await pruner(deps).prune({ all: false, force: false }, scope);
    expect(report.cache).toEqual({ removedBlobs: 3, freedBytes: 5 * 1048576 });

    const down = pruner(deps, {
      pruneCache: () =>
        Promise.reject(new UnavailableError("image puller is unavailable at /run/x.sock", { reason: "UNAVAILABLE" })),
    });
    await operation("op-old", 40, "succeeded");
    const partial = await down.prune({ all: false, force: false }, scope);
    expect(partial.cache).toEqual({ error: "image puller is unavailable at /run/x.sock" });
    expect(partial.removedOperations).toBe(1);
  });

  it("with all, lists unused images and the kernels only they use, deleting nothing without force", async () => {
    const images: ImageView[] = [
      { ...image({ name: "used", rootfsBytes: 100, workSeedBytes: 1 }), usedBy: ["box"] },
      { ...image({ name: "idle", rootfsBytes: 200, workSeedBytes: 2 }), usedBy: [] },
    ];
    const kernels: KernelView[] = [
      { ...kernel({ name: "k-default", isDefault: true }), usedBy: [] },
      { ...kernel({ name: "k-idle-image", kernelBytes: 10, initrdBytes: 5 }), usedBy: ["image:idle"] },
      { ...kernel({ name: "k-vm" }), usedBy: ["vm:box"] },
      { ...kernel({ name: "k-none", kernelBytes: 7, initrdBytes: 0 }), usedBy: [] },
    ];
    const { deps, deleted } = catalogs(images, kernels);

    const listed = await pruner(deps).prune({ all: true, force: false }, scope);
    expect(listed.unused).toEqual([
      { kind: "image", name: "idle", bytes: 202, removed: false, note: "" },
      { kind: "kernel", name: "k-idle-image", bytes: 15, removed: false, note: "" },
      { kind: "kernel", name: "k-none", bytes: 7, removed: false, note: "" },
    ]);
    expect(deleted).toEqual([]);

    const forced = await pruner(deps).prune({ all: true, force: true }, scope);
    expect(forced.unused.map((item) => [item.name, item.removed])).toEqual([
      ["idle", true],
      ["k-idle-image", true],
      ["k-none", true],
    ]);
    expect(deleted).toEqual(["image:idle", "kernel:k-idle-image", "kernel:k-none"]);
    expect(images.map((i) => i.name)).toEqual(["used"]);
    expect(kernels.map((k) => k.name)).toEqual(["k-default", "k-vm"]);
  });

  it("keeps, with the reason, what was taken into use between the listing and the delete", async () => {
    const images: ImageView[] = [{ ...image({ name: "raced" }), usedBy: [] }];
    const kernels: KernelView[] = [{ ...kernel({ name: "k-raced" }), usedBy: ["image:raced"] }];
    const { deps, deleted } = catalogs(images, kernels, ["raced"]);

    const report = await pruner(deps).prune({ all: true, force: true }, scope);
    expect(report.unused).toEqual([
      {
        kind: "image",
        name: "raced",
        bytes: expect.any(Number) as number,
        removed: false,
        note: "image raced is used by vm:late",
      },
    ]);
    expect(deleted).toEqual([]);
    expect(kernels.map((k) => k.name)).toEqual(["k-raced"]);
  });
});
