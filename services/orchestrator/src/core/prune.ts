/**
 * Housekeeping: operations older than the retention, the image puller's cache,
 * and (asked for by name: `all`) images and kernels nothing uses. What deletes
 * the owner's data — images and kernels — is only listed unless `force` says
 * to delete it; operations and the puller's cache are history and caches and
 * go at once.
 */
import type { Logger } from "@banger/common";
import { type Kysely } from "kysely";
import { deleteOperationsEndedBefore, type Database } from "../store/index.js";
import type { CallScope } from "./call-scope.js";
import type { ImageCatalog } from "./images.js";
import type { KernelCatalog } from "./kernels.js";
import type { PullerPort } from "./ports.js";

const DAY_MS = 24 * 60 * 60 * 1000;

export interface PruneRequest {
  /** Also images no VM uses and kernels no image or VM uses (never the default kernel). */
  readonly all: boolean;
  /** With `all`: delete them; without, they are only listed. */
  readonly force: boolean;
}

export interface PrunedItem {
  readonly kind: "image" | "kernel";
  readonly name: string;
  /** Bytes on disk it held (root filesystem and work seed; kernel, initrd). */
  readonly bytes: number;
  /** Whether it was deleted (false: listed only, or refused because something took it into use meanwhile). */
  readonly removed: boolean;
  /** Why it was not deleted when `force` asked to; "" else. */
  readonly note: string;
}

export interface PruneReport {
  readonly retentionDays: number;
  readonly removedOperations: number;
  /** The puller's part; `error` when it could not be asked (the rest still ran). */
  readonly cache: { readonly removedBlobs: number; readonly freedBytes: number } | { readonly error: string };
  readonly unused: readonly PrunedItem[];
}

export interface Pruner {
  prune(request: PruneRequest, scope: CallScope): Promise<PruneReport>;
  /** Operations past the retention only (at start and daily): how many went. */
  pruneOperations(): Promise<number>;
}

export interface PrunerDeps {
  readonly db: Kysely<Database>;
  readonly images: Pick<ImageCatalog, "list" | "delete">;
  readonly kernels: Pick<KernelCatalog, "list" | "delete">;
  readonly puller: Pick<PullerPort, "pruneCache">;
  readonly retentionDays: number;
  readonly logger: Logger;
  readonly now?: () => Date;
}

export function createPruner(deps: PrunerDeps): Pruner {
  const now = deps.now ?? (() => new Date());
  const pruneOperations = async (): Promise<number> => {
    const cutoff = new Date(now().getTime() - deps.retentionDays * DAY_MS);
    const removed = await deleteOperationsEndedBefore(deps.db, cutoff);
    if (removed > 0) {
      deps.logger.info(
        { removedOperations: removed, retentionDays: deps.retentionDays },
        `pruned ${removed} operations that ended over ${deps.retentionDays} days ago`,
      );
    }
    return removed;
  };
  return {
    pruneOperations,
    async prune(request, scope) {
      const removedOperations = await pruneOperations();
      const cache = await deps.puller.pruneCache(0, scope).catch((error: unknown) => ({
        error: error instanceof Error ? error.message : String(error),
      }));
      const unused = request.all ? await pruneUnused(deps, request.force) : [];
      return { retentionDays: deps.retentionDays, removedOperations, cache, unused };
    },
  };
}

/** Images first: an image deleted may leave its kernel unused, which the kernel pass then sees. */
async function pruneUnused(deps: PrunerDeps, force: boolean): Promise<PrunedItem[]> {
  const items: PrunedItem[] = [];
  const unusedImages = (await deps.images.list()).filter((image) => image.usedBy.length === 0);
  for (const image of unusedImages) {
    const bytes = image.rootfsBytes + image.workSeedBytes;
    items.push(await deleteIf(force, "image", image.name, bytes, () => deps.images.delete(image.name)));
  }
  // Listed only: the images above are still there, so their kernels count as unused only when deleted.
  const goneImages = new Set(items.filter((item) => item.removed || !force).map((item) => `image:${item.name}`));
  const unusedKernels = (await deps.kernels.list()).filter(
    (kernel) => !kernel.isDefault && kernel.usedBy.every((user) => goneImages.has(user)),
  );
  for (const kernel of unusedKernels) {
    const bytes = kernel.kernelBytes + kernel.initrdBytes;
    items.push(await deleteIf(force, "kernel", kernel.name, bytes, () => deps.kernels.delete(kernel.name)));
  }
  if (force && items.some((item) => item.removed)) {
    deps.logger.info(
      { removed: items.filter((item) => item.removed).map((item) => `${item.kind}:${item.name}`) },
      "pruned unused images and kernels",
    );
  }
  return items;
}

async function deleteIf(
  force: boolean,
  kind: PrunedItem["kind"],
  name: string,
  bytes: number,
  remove: () => Promise<unknown>,
): Promise<PrunedItem> {
  if (!force) return { kind, name, bytes, removed: false, note: "" };
  try {
    await remove();
    return { kind, name, bytes, removed: true, note: "" };
  } catch (error) {
    // Taken into use since the listing (a create that started meanwhile): kept, and said why.
    return { kind, name, bytes, removed: false, note: error instanceof Error ? error.message : String(error) };
  }
}
