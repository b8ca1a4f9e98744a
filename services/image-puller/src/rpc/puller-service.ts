import { implementService } from "@banger/common";
import {
  LayerState,
  PullStage,
  PullerService,
  type PullResponseSchema,
} from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { pull, type PullDeps, type PullEvent, type PullResult } from "../core/pull.js";
import { describePuller } from "../identity.js";
import { createRegistryClient, type BlobCache } from "../registry/index.js";

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

export interface PullerServiceDeps {
  readonly cache: BlobCache;
  readonly stateDir: string;
  readonly createBuilder: PullDeps["createBuilder"];
  readonly scratchDir?: PullDeps["scratchDir"];
  /** docker config.json with registry credentials; unset = none. */
  readonly dockerConfigPath?: string;
}

/** `banger.imagepuller.v1.PullerService`. */
export function createPullerService(deps: PullerServiceDeps): ServiceImpl<typeof PullerService> {
  return implementService(PullerService, {
    getVersion() {
      return describePuller();
    },
    pull(req, ctx) {
      const registry = createRegistryClient({
        cache: deps.cache,
        insecureRegistries: req.insecureRegistries,
        ...(deps.dockerConfigPath ? { dockerConfigPath: deps.dockerConfigPath } : {}),
      });
      return streamPull(
        {
          registry,
          createBuilder: deps.createBuilder,
          stateDir: deps.stateDir,
          ...(deps.scratchDir ? { scratchDir: deps.scratchDir } : {}),
        },
        req,
        ctx.signal,
      );
    },
  });
}

async function* streamPull(
  deps: PullDeps,
  req: Parameters<NonNullable<ServiceImpl<typeof PullerService>["pull"]>>[0],
  signal: AbortSignal,
): AsyncIterable<Response> {
  const queue: Response[] = [];
  let wake: (() => void) | undefined;
  let outcome: { result: PullResult } | { error: unknown } | undefined;
  const push = (response: Response) => {
    // Byte progress comes per chunk: keep only the newest pending one per layer.
    const last = queue.at(-1);
    if (
      last?.event?.case === "layer" &&
      response.event?.case === "layer" &&
      last.event.value.digest === response.event.value.digest &&
      last.event.value.state === LayerState.DOWNLOADING &&
      response.event.value.state === LayerState.DOWNLOADING
    ) {
      queue[queue.length - 1] = response;
    } else {
      queue.push(response);
    }
    wake?.();
  };
  void pull(
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
    (event) => push(eventToProto(event)),
  )
    .then(
      (result) => (outcome = { result }),
      (error: unknown) => (outcome = { error }),
    )
    .finally(() => wake?.());

  for (;;) {
    while (queue.length > 0) {
      const next = queue.shift();
      if (next) yield next;
    }
    if (outcome) break;
    await new Promise<void>((resolve) => (wake = resolve));
    wake = undefined;
  }
  if ("error" in outcome) throw outcome.error;
  const r = outcome.result;
  yield {
    event: {
      case: "result",
      value: {
        ...r,
        rootfsBytes: BigInt(r.rootfsBytes),
        workSeedBytes: BigInt(r.workSeedBytes),
        downloadedBytes: BigInt(r.downloadedBytes),
        entrypoint: [...r.entrypoint],
        cmd: [...r.cmd],
        env: [...r.env],
      },
    },
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
