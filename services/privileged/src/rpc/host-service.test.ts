import { create } from "@bufbuild/protobuf";
import { GetVersionRequestSchema } from "@banger/gen/banger/privileged/v1/host_pb.js";
import type { HandlerContext } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import type { HostFeatures } from "../host/features.js";
import { createHostService, type HostServiceDeps } from "./host-service.js";

const FEATURES: HostFeatures = {
  tun: true,
  bridge: true,
  nftables: true,
  loop: true,
  deviceMapper: false,
  deviceMapperDetail: "no /dev/mapper/control",
  resolved: false,
  kvm: false,
  kvmDetail: "/dev/kvm absent",
  kernelRelease: "6.1.0-27-amd64",
  ipForward: true,
  modulesVisible: true,
};

function service() {
  let probes = 0;
  const deps = {
    ownerUid: 1000,
    firecrackerBinary: "/usr/local/bin/firecracker",
    qemuBinary: "/usr/bin/qemu-system-x86_64",
    hostFeatures: () => {
      probes++;
      return FEATURES;
    },
  } as unknown as HostServiceDeps;
  const host = createHostService(deps);
  const getVersion = (identityOnly: boolean) =>
    host.getVersion(create(GetVersionRequestSchema, { identityOnly }), {} as HandlerContext);
  return { getVersion, probes: () => probes };
}

describe("HostService/GetVersion", () => {
  it("probes the host's features at each call", async () => {
    const { getVersion, probes } = service();
    const first = await getVersion(false);
    await getVersion(false);
    expect(probes()).toBe(2);
    expect(first).toMatchObject({
      ownerUid: 1000,
      features: FEATURES,
      firecrackerBinary: "/usr/local/bin/firecracker",
      qemuBinary: "/usr/bin/qemu-system-x86_64",
    });
  });

  it("identity_only answers who the helper is without probing the host (what status asks)", async () => {
    const { getVersion, probes } = service();
    const identity = await getVersion(true);
    expect(probes()).toBe(0);
    expect(identity).toMatchObject({ ownerUid: 1000, pid: process.pid });
    expect(identity).not.toHaveProperty("features");
    expect(identity).not.toHaveProperty("firecrackerBinary");
  });
});
