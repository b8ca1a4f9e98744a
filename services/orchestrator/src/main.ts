#!/usr/bin/env node
import { parseArgs } from "node:util";
import { DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, runService, runtimeLayout } from "@banger/common";
import { createOrchestrator } from "./app.js";

const { values } = parseArgs({
  options: {
    "runtime-dir": { type: "string", default: DEFAULT_RUNTIME_DIR },
    "state-dir": { type: "string", default: DEFAULT_STATE_DIR },
    socket: { type: "string" },
    "privileged-socket": { type: "string" },
    "puller-socket": { type: "string" },
  },
  strict: true,
});

const layout = runtimeLayout(values["runtime-dir"]);
const socketPath = values.socket ?? layout.orchestratorSocket;
const orchestrator = createOrchestrator({
  socketPath,
  privilegedSocket: values["privileged-socket"] ?? layout.privilegedSocket,
  pullerSocket: values["puller-socket"] ?? layout.pullerSocket,
});

await runService({
  service: "orchestrator",
  socketPath,
  mode: 0o600,
  files: orchestrator.files,
  routes: orchestrator.routes,
});
