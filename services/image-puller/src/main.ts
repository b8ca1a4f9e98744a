#!/usr/bin/env node
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, runService, runtimeLayout } from "@banger/common";
import { PullerService, file_banger_imagepuller_v1_puller } from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import { createImageBuilder } from "./build/index.js";
import { createScratchDir } from "./build/scratch.js";
import { createBuiltCache } from "./core/built-cache.js";
import { createBlobCache, defaultDockerConfigPath } from "./registry/index.js";
import { createPullerService } from "./rpc/puller-service.js";

const { values } = parseArgs({
  options: {
    "runtime-dir": { type: "string", default: DEFAULT_RUNTIME_DIR },
    "state-dir": { type: "string", default: DEFAULT_STATE_DIR },
    "cache-dir": { type: "string" },
    "scratch-dir": { type: "string", default: "/dev/shm" },
    socket: { type: "string" },
  },
  strict: true,
});

const stateDir = resolve(values["state-dir"]);
await runService({
  service: "image-puller",
  socketPath: values.socket ?? runtimeLayout(values["runtime-dir"]).pullerSocket,
  mode: 0o600,
  files: [file_banger_imagepuller_v1_puller],
  routes: (router, logger) => {
    router.service(
      PullerService,
      createPullerService({
        // Staging directories the orchestrator names must be inside the state directory.
        stateDir,
        cache: createBlobCache(resolve(values["cache-dir"] ?? join(stateDir, "cache", "blobs"))),
        createBuilder: createImageBuilder,
        scratchDir: createScratchDir(values["scratch-dir"]),
        builtCache: createBuiltCache(join(stateDir, "cache", "built")),
        logger,
        dockerConfigPath: defaultDockerConfigPath(process.env, homedir()),
      }),
    );
  },
});
