#!/usr/bin/env node
import { parseArgs } from "node:util";
import { DiskService } from "@banger/gen/banger/privileged/v1/disk_pb.js";
import { HostService } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { NetworkService } from "@banger/gen/banger/privileged/v1/network_pb.js";
import { VmmService } from "@banger/gen/banger/privileged/v1/vmm_pb.js";
import { DEFAULT_RUNTIME_DIR, implementService, runService, runtimeLayout } from "@banger/common";
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
    // The host operations come with the helper's validation layer; until then they answer UNIMPLEMENTED.
    router.service(NetworkService, implementService(NetworkService, {}));
    router.service(DiskService, implementService(DiskService, {}));
    router.service(VmmService, implementService(VmmService, {}));
  },
});
