#!/usr/bin/env node
import { parseArgs } from "node:util";
import { PermissionDeniedError } from "@banger/common/errors";
import { DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, runtimeLayout } from "@banger/common/layout";
import { runService } from "@banger/common/service-main";
import { DiskService } from "@banger/gen/banger/privileged/v1/disk_pb.js";
import { HostService } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { NetworkService } from "@banger/gen/banger/privileged/v1/network_pb.js";
import { VmmService } from "@banger/gen/banger/privileged/v1/vmm_pb.js";
import { helperConfig } from "./config.js";
import { createDiskOps } from "./ops/disk.js";
import { createNetworkOps } from "./ops/network.js";
import { createVmmOps } from "./ops/vmm.js";
import { hostPorts } from "./ports.js";
import { PRIVILEGED_FILES } from "./rpc/files.js";
import { createDiskService } from "./rpc/disk-service.js";
import { createHostService } from "./rpc/host-service.js";
import { createNetworkService } from "./rpc/network-service.js";
import { createVmmService } from "./rpc/vmm-service.js";

// The systemd unit runs the helper with --jitless (MemoryDenyWriteExecute=yes aborts a Node
// that JIT-compiles). Then WebAssembly is absent, and Node's bundled undici, loaded on the first
// use of the Fetch API's Headers (which connect uses for every request), fails to compile its
// HTTP/1 parser in a promise nobody awaits. The helper never uses that parser: ignore exactly
// that rejection; any other unhandled rejection still ends the process.
if (!("WebAssembly" in globalThis)) {
  process.on("unhandledRejection", (reason) => {
    const error = reason as Error | undefined;
    if (error?.name === "ReferenceError" && error.message === "WebAssembly is not defined") return;
    throw reason;
  });
}

const { values } = parseArgs({
  options: {
    "runtime-dir": { type: "string", default: DEFAULT_RUNTIME_DIR },
    "state-dir": { type: "string", default: DEFAULT_STATE_DIR },
    socket: { type: "string" },
    "owner-uid": { type: "string" },
    "owner-gid": { type: "string" },
    firecracker: { type: "string" },
    qemu: { type: "string" },
  },
  strict: true,
});

// The owner comes from the helper's own configuration, never from a request.
const config = helperConfig({
  ownerUid: values["owner-uid"] ?? process.env["SUDO_UID"],
  ownerGid: values["owner-gid"] ?? process.env["SUDO_GID"],
  stateDir: values["state-dir"],
  runtimeDir: values["runtime-dir"],
  firecrackerBin: values.firecracker,
  qemuBin: values.qemu,
});
// The composition root: the host's adapters, built once here, and the ops over them.
// VMMs run as the owner (ops/vmm/launch.ts): KVM is usable only if the owner may open /dev/kvm.
const ports = hostPorts({ uid: config.ownerUid, gid: config.ownerGid });
const { runner } = ports;
const network = createNetworkOps({ runner, config, resolvedPresent: ports.resolvedPresent });
const disk = createDiskOps({ runner, config });
const vmm = createVmmOps({
  config,
  runner,
  procRoot: ports.procRoot,
  spawnProcess: ports.spawnProcess,
  kvmUsable: ports.kvmUsable,
  hostTscKhz: ports.hostTscKhz,
});

// Only the owner may call: the socket admits the owner's group (0660, root:<owner gid>, given
// at bind time) when the owner is not root, and every connection's SO_PEERCRED uid is checked on every RPC.
// Under systemd the socket is banger-privileged.socket's (root:banger 0660), passed as fd 3
// and taken by runService; the uid check applies to it all the same.
const sharedSocket = config.ownerUid !== (process.getuid?.() ?? 0);
await runService({
  service: "privileged",
  socketPath: values.socket ?? runtimeLayout(config.runtimeDir).privilegedSocket,
  mode: sharedSocket ? 0o660 : 0o600,
  access: {
    logArguments: true,
    peerCredentials: ports.peerCredentials,
    authorize: (peer) => {
      if (peer?.uid !== config.ownerUid) {
        throw new PermissionDeniedError(
          `uid ${peer?.uid ?? "unknown"} is not banger's owner; the helper answers only uid ${config.ownerUid}`,
          {
            reason: "NOT_OWNER",
          },
        );
      }
    },
    ...(sharedSocket ? { socketGroup: config.ownerGid } : {}),
  },
  logPrefix: "helper rpc",
  files: PRIVILEGED_FILES,
  routes: (router) => {
    router.service(
      HostService,
      createHostService({
        ownerUid: config.ownerUid,
        firecrackerBinary: config.firecrackerBin,
        qemuBinary: config.qemuBin,
        network,
        disk,
        vmm,
        hostFeatures: ports.hostFeatures,
      }),
    );
    router.service(NetworkService, createNetworkService(network));
    router.service(DiskService, createDiskService(disk));
    router.service(VmmService, createVmmService(vmm));
  },
});
