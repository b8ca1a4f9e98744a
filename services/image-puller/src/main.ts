#!/usr/bin/env node
import { parseArgs } from "node:util";
import { DEFAULT_RUNTIME_DIR, runService, runtimeLayout } from "@banger/common";
import { PullerService, file_banger_imagepuller_v1_puller } from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import { createPullerService } from "./rpc/puller-service.js";

const { values } = parseArgs({
  options: {
    "runtime-dir": { type: "string", default: DEFAULT_RUNTIME_DIR },
    socket: { type: "string" },
  },
  strict: true,
});

await runService({
  service: "image-puller",
  socketPath: values.socket ?? runtimeLayout(values["runtime-dir"]).pullerSocket,
  mode: 0o600,
  files: [file_banger_imagepuller_v1_puller],
  routes: (router) => {
    router.service(PullerService, createPullerService(undefined));
  },
});
