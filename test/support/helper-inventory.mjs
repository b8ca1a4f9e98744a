#!/usr/bin/env node
// Prints what the privileged helper at argv[2] lists as banger's, as JSON (less the warm pool's taps, which are
// refilled under new names): for leak checks in tests. Run it as the owner, the only uid the helper answers.
import { createUnixTransport } from "@banger/common";
import { HostService, LinkKind } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { createClient } from "@connectrpc/connect";

const { transport, close } = createUnixTransport(process.argv[2], { peer: "privileged helper" });
const found = await createClient(HostService, transport).getInventory({});
close();
console.log(
  JSON.stringify({
    links: found.links
      .filter((l) => !(l.kind === LinkKind.TAP && l.vmId === ""))
      .map((l) => l.name)
      .sort(),
    natRules: found.natRules.length,
    loops: found.loopDevices.length,
    vmms: found.vmmProcesses.length,
  }),
);
