#!/usr/bin/env node
import { parseArgs } from "node:util";
import { DEFAULT_RUNTIME_DIR, runService, runtimeLayout } from "@banger/common";
import { HostService } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { PRIVILEGED_FILES } from "./rpc/files.js";
import { createHostService } from "./rpc/host-service.js";

const { values } = parseArgs({
  options: {
    "runtime-dir": { type: "string", default: DEFAULT_RUNTIME_DIR },
    socket: { type: "string" },
    "owner-uid": { type: "string" },
  },
  strict: true,
});

const layout = runtimeLayout(values["runtime-dir"]);
// The owner comes from the helper's own configuration, never from a request.
const ownerUid = Number(values["owner-uid"] ?? process.env["SUDO_UID"] ?? process.getuid?.() ?? 0);

await runService({
  service: "privileged",
  socketPath: values.socket ?? layout.privilegedSocket,
  mode: 0o600,
  logPrefix: "helper rpc",
  files: PRIVILEGED_FILES,
  routes: (router) => {
    router.service(HostService, createHostService({ ownerUid }));
  },
});
