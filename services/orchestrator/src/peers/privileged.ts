import { createPeerClient, createUnixTransport } from "@banger/common";
import { DiskService, GuestDisk } from "@banger/gen/banger/privileged/v1/disk_pb.js";
import { HostService, LinkKind, VmmKind } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { NetworkService } from "@banger/gen/banger/privileged/v1/network_pb.js";
import { VmmService, VmmSignal, type LaunchVmmResponse } from "@banger/gen/banger/privileged/v1/vmm_pb.js";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HostPort, LaunchedVmm } from "../core/ports.js";
import type { PeerProbe } from "../core/status.js";
import { callOptions } from "./call-options.js";
import { identityFromVersion } from "./identity.js";

export interface PrivilegedPeer extends PeerProbe, HostPort {
  readonly close: () => void;
}

function launchedVmm(launched: LaunchVmmResponse): LaunchedVmm {
  if (!launched.startTime) throw new Error("the helper launched a VMM without a start time");
  return {
    pid: launched.pid,
    startTime: timestampDate(launched.startTime),
    controlSocket: launched.controlSocket,
    logPath: launched.logPath,
    consolePath: launched.consolePath,
  };
}

/** The orchestrator's client of the privileged helper. Errors arrive as banger's typed errors. */
export function createPrivilegedPeer(
  socketPath: string,
  /** Bytes the helper's log relays keep per VM log (LaunchVmm's log_max_bytes); 0 = the helper's default. */
  logMaxBytes = 0,
): PrivilegedPeer {
  const { transport, close } = createUnixTransport(socketPath, { peer: "privileged helper" });
  const host = createPeerClient(HostService, transport);
  const network = createPeerClient(NetworkService, transport);
  const disk = createPeerClient(DiskService, transport);
  const vmm = createPeerClient(VmmService, transport);
  return {
    name: "privileged",
    socket: socketPath,
    async identify(scope) {
      return identityFromVersion(await host.getVersion({ identityOnly: true }, callOptions(scope)));
    },
    async features(scope) {
      const version = await host.getVersion({}, callOptions(scope));
      const found = version.features;
      return {
        tun: found?.tun ?? false,
        bridge: found?.bridge ?? false,
        nftables: found?.nftables ?? false,
        loop: found?.loop ?? false,
        deviceMapper: found?.deviceMapper ?? false,
        deviceMapperDetail: found?.deviceMapperDetail ?? "",
        resolved: found?.resolved ?? false,
        kvm: found?.kvm ?? false,
        kvmDetail: found?.kvmDetail ?? "",
        kernelRelease: found?.kernelRelease ?? "",
        ipForward: found?.ipForward,
        modulesVisible: found?.modulesVisible ?? false,
        vmmBinaries: { firecracker: version.firecrackerBinary, qemu: version.qemuBinary },
        ownerUid: version.ownerUid,
      };
    },
    async inventory(scope) {
      const [found, version] = await Promise.all([
        host.getInventory({}, callOptions(scope)),
        host.getVersion({ identityOnly: true }, callOptions(scope)),
      ]);
      return {
        ownerUid: version.ownerUid,
        taps: found.links
          .filter((link) => link.kind === LinkKind.TAP && link.vmId !== "")
          .map((link) => ({ name: link.name, vmId: link.vmId })),
        poolTaps: found.links
          .filter((link) => link.kind === LinkKind.TAP && link.vmId === "" && link.name.startsWith("bgr-p"))
          .map((link) => ({ name: link.name, ownerUid: link.ownerUid })),
        natRules: found.natRules.map((rule) => ({ vmId: rule.vmId })),
        loops: found.loopDevices.map((loop) => ({ device: loop.device, backingFile: loop.backingFile })),
        snapshots: found.dmDevices.filter((dm) => dm.vmId !== "").map((dm) => ({ vmId: dm.vmId })),
        vmms: found.vmmProcesses.map((vmm) => ({
          vmId: vmm.vmId,
          pid: vmm.pid,
          startTime: vmm.startTime ? timestampDate(vmm.startTime) : new Date(0),
        })),
      };
    },
    async ensureBridge(name, address, scope) {
      await network.ensureBridge({ name, address }, callOptions(scope));
    },
    async createTap(vmId, bridge, scope, { fromPool = "", guestAddress = "" } = {}) {
      return (await network.createTap({ vmId, bridge, fromPool, guestAddress }, callOptions(scope))).name;
    },
    async createPoolTap(bridge, scope) {
      return (await network.createTap({ bridge, pool: true }, callOptions(scope))).name;
    },
    async deletePoolTap(name, scope) {
      await network.deleteTap({ poolName: name }, callOptions(scope));
    },
    async deleteTap(vmId, scope) {
      await network.deleteTap({ vmId }, callOptions(scope));
    },
    async enableNat(vmId, guestAddress, bridge, scope) {
      await network.enableNat({ vmId, guestAddress, bridge }, callOptions(scope));
    },
    async configureResolver(bridge, dnsAddress, scope) {
      await network.configureResolver({ bridge, dnsAddress }, callOptions(scope));
    },
    async disableNat(vmId, scope) {
      await network.disableNat({ vmId }, callOptions(scope));
    },
    async attachLoop(path, readOnly, scope) {
      return (await disk.attachLoop({ path, readOnly }, callOptions(scope))).device;
    },
    async detachLoop(device, path, scope) {
      await disk.detachLoop({ device, path }, callOptions(scope));
    },
    async checkFilesystem(vmId, scope) {
      return (await disk.checkFilesystem({ vmId, disk: GuestDisk.ROOT }, callOptions(scope))).exitCode;
    },
    async writeGuestFiles(vmId, files, scope) {
      await disk.writeGuestFiles(
        { vmId, disk: GuestDisk.ROOT, files: files.map((f) => ({ ...f, content: f.content })) },
        callOptions(scope),
      );
    },
    async launchFirecracker(vmId, scope) {
      return launchedVmm(
        await vmm.launchVmm({ vmId, kind: VmmKind.FIRECRACKER, logMaxBytes: BigInt(logMaxBytes) }, callOptions(scope)),
      );
    },
    async launchQemu(vmId, machine, scope) {
      const qemu = { ...machine, tscKhz: 0 };
      return launchedVmm(
        await vmm.launchVmm(
          { vmId, kind: VmmKind.QEMU_MICROVM, qemu, logMaxBytes: BigInt(logMaxBytes) },
          callOptions(scope),
        ),
      );
    },
    async createSnapshot(vmId, originDevice, cowDevice, scope) {
      return (await disk.createSnapshot({ vmId, originDevice, cowDevice }, callOptions(scope))).device;
    },
    async removeSnapshot(vmId, scope) {
      return (await disk.removeSnapshot({ vmId }, callOptions(scope))).existed;
    },
    async removeVmmFiles(vmId, scope) {
      return (await vmm.removeVmmFiles({ vmId }, callOptions(scope))).existed;
    },
    async signalVmm(vmId, pid, startTime, signal, scope) {
      const sent = await vmm.signalVmm(
        {
          vmId,
          pid,
          startTime: timestampFromDate(startTime),
          signal: signal === "kill" ? VmmSignal.KILL : VmmSignal.TERM,
        },
        callOptions(scope),
      );
      return sent.existed;
    },
    async vmmState(vmId, pid, startTime, scope) {
      const state = await vmm.getVmm({ vmId, pid, startTime: timestampFromDate(startTime) }, callOptions(scope));
      return { running: state.running, cpuTimeMs: Number(state.cpuTimeMs), rssBytes: Number(state.rssBytes) };
    },
    close,
  };
}
