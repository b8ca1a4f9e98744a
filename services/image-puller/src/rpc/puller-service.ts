import { InvalidArgumentError } from "@banger/common/errors";
import { eventStream } from "@banger/common/event-stream";
import { implementService } from "@banger/common/service-impl";
import type { Logger } from "@banger/common/logging";
import {
  LayerState,
  PullStage,
  PullerService,
  type BuildTinyImageResponseSchema,
  type PullRequest,
  type PullResponseSchema,
} from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { createLeases } from "../core/leases.js";
import type { BlobCache, Busybox, BuiltCache, OpenRegistry } from "../core/ports.js";
import { pull, type PullDeps, type PullEvent, type PullResult } from "../core/pull.js";
import { buildTiny, type TinyDeps } from "../core/tiny.js";
import { describePuller } from "../identity.js";
import { DEFAULT_PLATFORM, hostOfKey, parseReference, type Credentials } from "../registry/index.js";

type Response = MessageInitShape<typeof PullResponseSchema>;

const STAGE: Record<Extract<PullEvent, { kind: "stage" }>["stage"], PullStage> = {
  resolve: PullStage.RESOLVE,
  layers: PullStage.LAYERS,
  mkfs: PullStage.MKFS,
  ownership: PullStage.OWNERSHIP,
  "work-seed": PullStage.WORK_SEED,
  verify: PullStage.VERIFY,
};

const LAYER: Record<Extract<PullEvent, { kind: "layer" }>["state"], LayerState> = {
  waiting: LayerState.WAITING,
  downloading: LayerState.DOWNLOADING,
  cached: LayerState.CACHED,
  downloaded: LayerState.DOWNLOADED,
  applied: LayerState.APPLIED,
};

/** The ports the service passes to core, built by the composition root (main.ts). */
export interface PullerServiceDeps {
  /** The blob cache, for prune. */
  readonly cache: BlobCache;
  /** A registry client over `cache` for one request's registries and credentials. */
  readonly openRegistry: OpenRegistry;
  readonly stateDir: string;
  readonly createBuilder: PullDeps["createBuilder"];
  readonly scratchDir?: PullDeps["scratchDir"];
  readonly builtCache?: BuiltCache;
  /** The static busybox of the built-in image `tiny`. */
  readonly busybox: Busybox;
  readonly logger?: Logger;
}

type RequestCredential = PullRequest["credentials"][number];

/** The caller's credentials by registry; one entry per registry, each complete. */
function credentialMap(list: readonly RequestCredential[]): Map<string, Credentials> {
  const map = new Map<string, Credentials>();
  for (const entry of list) {
    const host = hostOfKey(entry.registry);
    if (entry.registry.trim() === "" || host === "" || /[\s@]/.test(host)) {
      throw new InvalidArgumentError(`credentials name no valid registry host: ${JSON.stringify(entry.registry)}`, {
        reason: "INVALID_CREDENTIALS",
      });
    }
    if (map.has(host)) {
      throw new InvalidArgumentError(`credentials for registry ${host} are given twice`, {
        reason: "INVALID_CREDENTIALS",
      });
    }
    if (entry.identityToken !== "") {
      map.set(host, { kind: "identity-token", token: entry.identityToken });
    } else if (entry.username !== "" && entry.password !== "") {
      map.set(host, { kind: "basic", username: entry.username, password: entry.password });
    } else {
      throw new InvalidArgumentError(
        `credentials for registry ${host} need a username and password, or an identity token`,
        {
          reason: "INVALID_CREDENTIALS",
        },
      );
    }
  }
  return map;
}

const DAY_MS = 24 * 60 * 60 * 1000;

/** `banger.imagepuller.v1.PullerService`. */
export function createPullerService(deps: PullerServiceDeps): ServiceImpl<typeof PullerService> {
  const leases = createLeases();
  // Who the puller is does not change while it runs: read once, not /proc/self/status at every call.
  const identity = describePuller();
  const registryFor = (req: { insecureRegistries: string[]; credentials: RequestCredential[] }) =>
    deps.openRegistry({ insecureRegistries: req.insecureRegistries, credentials: credentialMap(req.credentials) });
  return implementService(PullerService, {
    getVersion() {
      return identity;
    },
    pull(req, ctx) {
      return streamPull(
        {
          registry: registryFor(req),
          createBuilder: deps.createBuilder,
          stateDir: deps.stateDir,
          leases,
          ...(deps.scratchDir ? { scratchDir: deps.scratchDir } : {}),
          ...(deps.builtCache ? { builtCache: deps.builtCache } : {}),
        },
        req,
        ctx.signal,
      );
    },
    buildTinyImage(req, ctx) {
      return streamTiny(
        {
          createBuilder: () => deps.createBuilder(),
          stateDir: deps.stateDir,
          busybox: deps.busybox,
        },
        { stagingDir: req.stagingDir, minRootfsMib: Number(req.minRootfsMib) },
        ctx.signal,
      );
    },
    async resolve(req, ctx) {
      const reference = parseReference(req.reference);
      const resolved = await registryFor(req).resolve(reference, req.platform ?? DEFAULT_PLATFORM, ctx.signal);
      return {
        canonicalReference: reference.canonical,
        manifestDigest: resolved.manifestDigest,
        platforms: [...resolved.platforms],
        compressedBytes: BigInt(resolved.manifest.layers.reduce((sum, layer) => sum + layer.size, 0)),
      };
    },
    async pruneCache(req) {
      const before = new Date(Date.now() - req.keepDays * DAY_MS);
      const blobs = await deps.cache.prune(before, leases.held());
      const built = (await deps.builtCache?.prune(before)) ?? { removed: 0, freedBytes: 0 };
      deps.logger?.info(
        { removedBlobs: blobs.removed, removedBuilds: built.removed, freedBytes: blobs.freedBytes + built.freedBytes },
        `cache pruned: ${blobs.removed} blobs and ${built.removed} built images removed`,
      );
      return { removedBlobs: blobs.removed, freedBytes: BigInt(blobs.freedBytes + built.freedBytes) };
    },
  });
}

async function* streamPull(deps: PullDeps, req: PullRequest, signal: AbortSignal): AsyncIterable<Response> {
  // Byte progress comes per chunk: a newer one replaces a pending one of the same layer.
  const downloading = (r: Response) =>
    r.event?.case === "layer" && r.event.value.state === LayerState.DOWNLOADING ? r.event.value.digest : undefined;
  const r = yield* eventStream<Response, PullResult>(
    (emit) =>
      pull(
        deps,
        {
          reference: req.reference,
          stagingDir: req.stagingDir,
          platform: req.platform,
          minRootfsMib: Number(req.minRootfsMib),
          headroomPercent: req.headroomPercent,
          inodeMarginPercent: req.inodeMarginPercent,
          skipWorkSeed: req.skipWorkSeed,
          maxConcurrentDownloads: req.maxConcurrentDownloads,
        },
        signal,
        (event) => emit(eventToProto(event)),
      ),
    (pending, next) => downloading(pending) !== undefined && downloading(pending) === downloading(next),
  );
  yield { event: { case: "result", value: resultToProto(r) } };
}

type TinyResponse = MessageInitShape<typeof BuildTinyImageResponseSchema>;

async function* streamTiny(
  deps: TinyDeps,
  req: Parameters<typeof buildTiny>[1],
  signal: AbortSignal,
): AsyncIterable<TinyResponse> {
  const r = yield* eventStream<TinyResponse, PullResult>((emit) =>
    buildTiny(deps, req, signal, (event) => {
      const { stage, done, durationMs, message } = event;
      emit({ event: { case: "stage", value: { stage: STAGE[stage], done, durationMs: BigInt(durationMs), message } } });
    }),
  );
  yield { event: { case: "result", value: resultToProto(r) } };
}

function resultToProto(r: PullResult) {
  return {
    ...r,
    rootfsBytes: BigInt(r.rootfsBytes),
    workSeedBytes: BigInt(r.workSeedBytes),
    downloadedBytes: BigInt(r.downloadedBytes),
    entrypoint: [...r.entrypoint],
    cmd: [...r.cmd],
    env: [...r.env],
  };
}

function eventToProto(event: PullEvent): Response {
  if (event.kind === "stage") {
    return {
      event: {
        case: "stage",
        value: {
          stage: STAGE[event.stage],
          done: event.done,
          durationMs: BigInt(event.durationMs),
          message: event.message,
        },
      },
    };
  }
  return {
    event: {
      case: "layer",
      value: {
        digest: event.digest,
        index: event.index,
        doneBytes: BigInt(event.doneBytes),
        totalBytes: BigInt(event.totalBytes),
        state: LAYER[event.state],
      },
    },
  };
}
