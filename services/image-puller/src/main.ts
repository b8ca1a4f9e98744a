#!/usr/bin/env node
import { homedir } from "node:os";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, runtimeLayout, stateLayout } from "@banger/common/layout";
import { runService } from "@banger/common/service-main";
import { PullerService, file_banger_imagepuller_v1_puller } from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import { createImageBuilder, DEFAULT_BUILD_LIMITS, type BuildLimits } from "./image-builder.js";
import { createScratchDir } from "./layers/scratch.js";
import { createBuiltCache } from "./cache/built-cache.js";
import { createHostBusybox } from "./host/busybox.js";
import { createBlobCache, createRegistryClient, defaultDockerConfigPath } from "./registry/index.js";
import { createPullerService } from "./rpc/puller-service.js";

const { values } = parseArgs({
  options: {
    "runtime-dir": { type: "string", default: DEFAULT_RUNTIME_DIR },
    "state-dir": { type: "string", default: DEFAULT_STATE_DIR },
    "cache-dir": { type: "string" },
    "scratch-dir": { type: "string", default: "/dev/shm" },
    socket: { type: "string" },
    "max-image-mib": { type: "string" },
    "max-image-entries": { type: "string" },
    "min-free-mib": { type: "string" },
    // The static busybox of the built-in image `tiny`.
    busybox: { type: "string" },
  },
  strict: true,
});

/** A whole number flag, at least 1; a bad one stops the puller before it listens. */
function count(flag: "max-image-mib" | "max-image-entries" | "min-free-mib", fallback: number): number {
  const text = values[flag];
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!/^[0-9]+$/.test(text) || !Number.isSafeInteger(value) || value < 1) {
    throw new Error(`--${flag} must be a whole number of at least 1, got ${JSON.stringify(text)}`);
  }
  return value;
}

const MIB = 1024 ** 2;
const limits: BuildLimits = {
  ...DEFAULT_BUILD_LIMITS,
  maxImageBytes: count("max-image-mib", DEFAULT_BUILD_LIMITS.maxImageBytes / MIB) * MIB,
  maxImageEntries: count("max-image-entries", DEFAULT_BUILD_LIMITS.maxImageEntries),
  minFreeBytes: count("min-free-mib", DEFAULT_BUILD_LIMITS.minFreeBytes / MIB) * MIB,
};

const stateDir = resolve(values["state-dir"]);
// The composition root: every adapter core uses (core/ports.ts) is built here.
const cache = createBlobCache(resolve(values["cache-dir"] ?? stateLayout(stateDir).blobCacheDir));
const dockerConfigPath = defaultDockerConfigPath(process.env, homedir());
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
        cache,
        openRegistry: (access) =>
          createRegistryClient({ cache, ...access, ...(dockerConfigPath ? { dockerConfigPath } : {}) }),
        createBuilder: (maxTreeBytes) =>
          createImageBuilder(
            maxTreeBytes === undefined
              ? limits
              : { ...limits, maxImageBytes: Math.min(limits.maxImageBytes, maxTreeBytes) },
          ),
        scratchDir: createScratchDir(values["scratch-dir"]),
        builtCache: createBuiltCache(stateLayout(stateDir).builtCacheDir),
        logger,
        busybox: createHostBusybox(values.busybox ? resolve(values.busybox) : undefined),
      }),
    );
  },
});
