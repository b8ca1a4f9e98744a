/**
 * A pull: the puller builds an image into a staging directory (from a
 * registry, or `tiny` from the host's files), its stages and layer progress
 * shown on the operation, then the image is published. A create's pull of a
 * catalog image runs inside the create's stage, shared by creates that need it.
 */
import { chmod, mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { InvalidArgumentError, NotFoundError, parseReference } from "@banger/common";
import { CONFIG_LIMITS } from "../../config/index.js";
import { getImage, getKernel, type ImageRecord } from "../../store/index.js";
import type { CallScope } from "../call-scope.js";
import type { OperationContext } from "../operations.js";
import type { PullEvent, PullOutcome, RegistryCredential } from "../ports.js";
import { CATALOG, TINY_IMAGE, type CatalogEntry } from "./catalog.js";
import { imageNameFromReference, validImageName } from "./model.js";
import { ownRootfs, publish, type ImageShelf } from "./publish.js";

/** What a pull needs from the operation it runs in. */
type PullContext = Pick<OperationContext, "id" | "signal" | "track" | "progress" | "stage">;

export interface PlannedPull {
  /** Built by the puller from the host's files (`tiny`), not pulled: reference and registry are "". */
  readonly builtin: boolean;
  readonly reference: string;
  readonly registry: string;
  readonly name: string;
  readonly fromCatalog: CatalogEntry | undefined;
  readonly platform: string;
  readonly minRootfsMib: number;
  /** Publish over a local image of that name (not in use) instead of refusing it. */
  readonly replace: boolean;
}

/** What `image pull` asked for, resolved: a catalog name or `tiny` to its reference, the image's name. */
export function planPull(req: {
  reference: string;
  name: string;
  platform: string;
  minRootfsMib: number;
  replace?: boolean;
}): PlannedPull {
  const builtin = req.reference === TINY_IMAGE;
  const fromCatalog = CATALOG.find((entry) => entry.name === req.reference);
  const reference = builtin ? "" : (fromCatalog?.reference ?? req.reference);
  if (reference === "" && !builtin) {
    throw new InvalidArgumentError("reference is required", { reason: "INVALID_REFERENCE" });
  }
  const registry = builtin ? "" : parseReference(reference).registry; // INVALID_REFERENCE before any operation
  const [minMib, maxMib] = CONFIG_LIMITS.minRootfsMib;
  if (
    req.minRootfsMib !== 0 &&
    !(Number.isInteger(req.minRootfsMib) && req.minRootfsMib >= minMib && req.minRootfsMib <= maxMib)
  ) {
    throw new InvalidArgumentError(
      `min_rootfs_mib must be ${minMib}-${maxMib} MiB (or 0: the configured default), got ${req.minRootfsMib}`,
      {
        reason: "INVALID_ROOTFS_SIZE",
      },
    );
  }
  const name = validImageName(
    req.name || (builtin ? TINY_IMAGE : fromCatalog?.name || imageNameFromReference(reference)),
  );
  return {
    builtin,
    reference,
    registry,
    name,
    fromCatalog,
    platform: req.platform,
    minRootfsMib: req.minRootfsMib,
    replace: req.replace === true,
  };
}

/** The pull itself: the puller builds into a staging directory, then the image is published. */
export async function runPull(shelf: ImageShelf, op: PullContext, req: PlannedPull): Promise<ImageRecord> {
  const { name, fromCatalog, builtin } = req;
  const staging = join(shelf.stagingRoot, op.id);
  // Group-writable: an installed puller is another user, sharing `.staging`'s group (setgid; see
  // deploy/systemd). Explicit chmod: the service's umask would take the group's bits away.
  await mkdir(staging, { recursive: true, mode: 0o770 });
  await chmod(staging, 0o770);
  try {
    const outcome = await build(shelf, op, req, staging);
    // The catalog's kernel, when it is here (else VMs boot the host default).
    const catalogKernel = fromCatalog?.defaultKernel ?? "";
    const defaultKernel = catalogKernel !== "" && (await getKernel(shelf.db, catalogKernel)) ? catalogKernel : null;
    const image = await op.stage("publish", async () => {
      await ownRootfs(staging, op.signal);
      return publish(
        shelf,
        staging,
        {
          name,
          reference: builtin ? null : outcome.canonicalReference || req.reference,
          manifestDigest: outcome.manifestDigest,
          platform: outcome.platform,
          rootfsBytes: outcome.rootfsBytes,
          workSeedBytes: outcome.workSeedBytes,
          defaultKernel,
          source: builtin ? "builtin" : "pulled",
          config: outcome.config,
          createdAt: shelf.now(),
        },
        { replace: req.replace, aside: join(shelf.stagingRoot, `${op.id}.replaced`) },
      );
    });
    shelf.logger.info({ image: name, digest: image.manifestDigest }, "image published");
    return image;
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/** The puller's part: pulls (or builds `tiny`) into `staging`, its stages and layers shown on `op`. */
async function build(shelf: ImageShelf, op: PullContext, req: PlannedPull, staging: string): Promise<PullOutcome> {
  const { reference, registry, builtin } = req;
  const minRootfsMib = req.minRootfsMib || (shelf.pullDefaults?.minRootfsMib ?? 0);
  const onEvent = layerProgress(op);
  if (builtin) return shelf.puller.buildTiny({ stagingDir: staging, minRootfsMib }, { signal: op.signal }, onEvent);
  // The owner's docker login for that registry travels with this pull only.
  const found = await shelf.credentials?.(registry, op.signal);
  const credentials: RegistryCredential[] = found
    ? [
        found.kind === "basic"
          ? { registry, username: found.username, password: found.password, identityToken: "" }
          : { registry, username: "", password: "", identityToken: found.token },
      ]
    : [];
  return shelf.puller.pull(
    {
      reference,
      stagingDir: staging,
      platform: req.platform,
      minRootfsMib,
      insecureRegistries: shelf.pullDefaults?.insecureRegistries ?? [],
      credentials,
    },
    { signal: op.signal },
    onEvent,
  );
}

/** The puller's events on the operation: its stages tracked, its layers' bytes as stage `layers`' progress. */
function layerProgress(op: PullContext): (event: PullEvent) => Promise<void> {
  const layers: { id: string; doneBytes: number; totalBytes: number; state: string }[] = [];
  return async (event: PullEvent) => {
    if (event.kind === "stage") {
      await op.track(event.name, event.done ? "done" : "running", event.message);
      return;
    }
    const { digest: id, doneBytes, totalBytes, state } = event;
    layers[event.index] = { id, doneBytes, totalBytes, state };
    const known = layers.filter((layer) => layer !== undefined);
    op.progress("layers", {
      doneBytes: known.reduce((sum, layer) => sum + layer.doneBytes, 0),
      totalBytes: known.reduce((sum, layer) => sum + layer.totalBytes, 0),
      items: [...known],
    });
  };
}

/**
 * Image `name` if it is local; else, when the catalog knows the name, pulls
 * it inside the caller's operation (the pull's layers show as progress of the
 * caller's stage `stage`). Two creates of one catalog image share its pull.
 */
export async function ensureLocal(
  shelf: ImageShelf,
  name: string,
  op: OperationContext,
  stage: string,
  scope: CallScope,
): Promise<ImageRecord> {
  const local = await getImage(shelf.db, validImageName(name));
  if (local) return local;
  // Two creates of one catalog image share its pull.
  const running = shelf.pulling.get(name);
  if (running) return running;
  const builtin = name === TINY_IMAGE;
  const fromCatalog = CATALOG.find((entry) => entry.name === name);
  if (!fromCatalog && !builtin) {
    throw new NotFoundError(`image ${name} is neither local nor in the catalog`, { reason: "IMAGE_NOT_FOUND" });
  }
  await shelf.puller.identify(scope);
  // The pull runs inside the caller's stage: its own stages become notes, its layers that stage's progress.
  const inner: PullContext = {
    id: op.id,
    signal: op.signal,
    track: async (stage, state) => {
      if (state === "done") shelf.logger.info({ image: name, stage }, "pull stage done");
      return Promise.resolve();
    },
    progress: (_stage, value) => op.progress(stage, value),
    stage: (_stage, work) => work(),
  };
  const pull = runPull(shelf, inner, {
    builtin,
    reference: fromCatalog?.reference ?? "",
    registry: fromCatalog ? parseReference(fromCatalog.reference).registry : "",
    name,
    fromCatalog,
    platform: "",
    minRootfsMib: 0,
    replace: false,
  }).finally(() => shelf.pulling.delete(name));
  shelf.pulling.set(name, pull);
  return pull;
}
