import { describe, expect, it } from "vitest";
import { resultFromText, resultToJson, type OperationResult } from "./operation-result.js";

const T0 = new Date("2026-11-23T10:00:00.000Z");
const vm: Extract<OperationResult, { kind: "vm" }> = {
  kind: "vm",
  vm: {
    id: "3f2a9c1e7b4d",
    name: "box",
    imageName: "debian",
    kernelName: "k",
    vcpu: 2,
    memoryMib: 1024,
    workDiskMib: 8192,
    guestIp: "172.30.0.2",
    mac: "06:00:ac:1e:00:02",
    vsockCid: 3,
    nat: false,
    vmm: "firecracker",
    rootDiskStrategy: "clone",
    lastError: null,
    pendingChanges: {},
    createdAt: T0,
    startedAt: null,
    state: "running",
    pid: 42,
    agentHealth: "ok",
    agentVersion: "8.1.3",
    publishedPorts: [{ hostIp: "127.0.0.1", hostPort: 8080, guestPort: 80, protocol: "tcp" }],
  },
};

describe("a VM operation's stored result", () => {
  it("keeps the VM's published ports", () => {
    expect(resultFromText(JSON.stringify(resultToJson(vm)), "result")).toEqual(vm);
  });

  it("stored before VMs published ports, reads back with none", () => {
    const json = resultToJson(vm) as { vm: Record<string, unknown> };
    delete json.vm["publishedPorts"];
    expect(resultFromText(JSON.stringify(json), "result")).toEqual({
      kind: "vm",
      vm: { ...vm.vm, publishedPorts: [] },
    });
  });

  it("with a port of an unknown protocol, is unreadable rather than wrong", () => {
    const json = resultToJson(vm) as { vm: Record<string, unknown> };
    json.vm["publishedPorts"] = [{ hostIp: "0.0.0.0", hostPort: 1, guestPort: 1, protocol: "sctp" }];
    expect(resultFromText(JSON.stringify(json), "result")).toMatchObject({ kind: "unreadable" });
  });
});
