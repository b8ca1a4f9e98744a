import { createPeerClient, createUnixTransport } from "@banger/common";
import { LayerState, PullStage, PullerService, type PullResult } from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import type { CallScope } from "../core/call-scope.js";
import type { PullEvent, PullerPort, PullOutcome } from "../core/ports.js";
import type { PeerProbe } from "../core/status.js";
import { callOptions } from "./call-options.js";
import { identityFromVersion } from "./identity.js";

export interface PullerPeer extends PeerProbe, PullerPort {
  readonly close: () => void;
}

const STAGE_NAMES: Record<PullStage, string | undefined> = {
  [PullStage.UNSPECIFIED]: undefined,
  [PullStage.RESOLVE]: "resolve",
  [PullStage.LAYERS]: "layers",
  [PullStage.MKFS]: "mkfs",
  [PullStage.OWNERSHIP]: "ownership",
  [PullStage.WORK_SEED]: "work-seed",
  [PullStage.VERIFY]: "verify",
};

const LAYER_STATES: Record<LayerState, string> = {
  [LayerState.UNSPECIFIED]: "",
  [LayerState.WAITING]: "waiting",
  [LayerState.DOWNLOADING]: "downloading",
  [LayerState.CACHED]: "cached",
  [LayerState.DOWNLOADED]: "downloaded",
  [LayerState.APPLIED]: "applied",
};

/** The orchestrator's client of the image puller. Errors arrive as banger's typed errors. */
export function createPullerPeer(socketPath: string): PullerPeer {
  const { transport, close } = createUnixTransport(socketPath, { peer: "image puller" });
  const puller = createPeerClient(PullerService, transport);
  return {
    name: "image-puller",
    socket: socketPath,
    async identify(scope) {
      return identityFromVersion(await puller.getVersion({}, callOptions(scope)));
    },
    async pull(request, scope: CallScope, onEvent: (event: PullEvent) => Promise<void>): Promise<PullOutcome> {
      const stream = puller.pull(
        {
          reference: request.reference,
          stagingDir: request.stagingDir,
          platform: platformMessage(request.platform),
          minRootfsMib: BigInt(request.minRootfsMib),
          insecureRegistries: [...request.insecureRegistries],
          credentials: request.credentials.map((c) => ({ ...c })),
        },
        callOptions(scope),
      );
      for await (const message of stream) {
        const event = message.event;
        if (event.case === "stage") {
          const name = STAGE_NAMES[event.value.stage];
          if (name) await onEvent({ kind: "stage", name, done: event.value.done, message: event.value.message });
        } else if (event.case === "layer") {
          const layer = event.value;
          await onEvent({
            kind: "layer",
            index: layer.index,
            digest: layer.digest,
            doneBytes: Number(layer.doneBytes),
            totalBytes: Number(layer.totalBytes),
            state: LAYER_STATES[layer.state],
          });
        } else if (event.case === "result") {
          return outcomeOf(event.value);
        }
      }
      throw new Error("the image puller ended the pull without a result");
    },
    async buildTiny(request, scope: CallScope, onEvent: (event: PullEvent) => Promise<void>): Promise<PullOutcome> {
      const stream = puller.buildTinyImage(
        { stagingDir: request.stagingDir, minRootfsMib: BigInt(request.minRootfsMib) },
        callOptions(scope),
      );
      for await (const message of stream) {
        const event = message.event;
        if (event.case === "stage") {
          const name = STAGE_NAMES[event.value.stage];
          if (name) await onEvent({ kind: "stage", name, done: event.value.done, message: event.value.message });
        } else if (event.case === "result") {
          return outcomeOf(event.value);
        }
      }
      throw new Error("the image puller ended the build of tiny without a result");
    },
    async pruneCache(keepDays, scope) {
      const response = await puller.pruneCache({ keepDays }, callOptions(scope));
      return { removedBlobs: response.removedBlobs, freedBytes: Number(response.freedBytes) };
    },
    close,
  };
}

function outcomeOf(r: PullResult): PullOutcome {
  return {
    manifestDigest: r.manifestDigest,
    platform: r.platform,
    rootfsFile: r.rootfsFile,
    rootfsBytes: Number(r.rootfsBytes),
    workSeedFile: r.workSeedFile,
    workSeedBytes: Number(r.workSeedBytes),
    config: { entrypoint: r.entrypoint, cmd: r.cmd, env: r.env, user: r.user, workingDir: r.workingDir },
    canonicalReference: r.canonicalReference,
  };
}

/** "os/arch[/variant]" → the puller's Platform; "" → unset (the puller's default, linux/amd64). */
function platformMessage(platform: string) {
  if (platform === "") return undefined;
  const [os = "", architecture = "", variant = ""] = platform.split("/");
  return { os, architecture, variant };
}
