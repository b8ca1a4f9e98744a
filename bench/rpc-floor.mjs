// The floor of bench/rpc.mjs, run as its own process: connect-node serving the same generated
// HostService on a Unix socket, with a GetVersion that answers at once (a constant of the shape
// the helper answers: same fields, similar size), and nothing else: no interceptors, no logging,
// no op-id context, no peer credentials. `node bench/rpc-floor.mjs SOCKET`; prints "listening".
import http2 from "node:http2";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { HostService } from "@banger/gen/banger/privileged/v1/host_pb.js";

const socketPath = process.argv[2];
const VERSION = {
  version: "0.1.0",
  pid: process.pid,
  uid: 0,
  gid: 0,
  capabilities: ["CAP_CHOWN", "CAP_SETGID", "CAP_SETUID", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"],
  missingCapabilities: [],
  privilegesOk: true,
  privilegesDetail: "holds exactly the 5 capabilities it needs",
  ownerUid: 1000,
  features: {
    tun: true,
    bridge: true,
    nftables: true,
    loop: true,
    deviceMapper: false,
    deviceMapperDetail: "/dev/mapper/control exists but the kernel has no device-mapper driver",
    resolved: false,
    kvm: false,
    kvmDetail: "/dev/kvm absent",
    kernelRelease: "6.1.0-27-amd64",
    ipForward: true,
    modulesVisible: true,
  },
  firecrackerBinary: "/usr/local/bin/firecracker",
  qemuBinary: "/usr/bin/qemu-system-x86_64",
};
const adapter = connectNodeAdapter({
  routes: (router) => router.service(HostService, { getVersion: () => VERSION }),
});
const server = http2.createServer(adapter);
server.listen(socketPath, () => console.log("listening"));
process.once("SIGTERM", () => server.close(() => process.exit(0)));
