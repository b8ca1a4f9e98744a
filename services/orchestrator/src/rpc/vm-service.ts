import { UnavailableError, implementService } from "@banger/common";
import { VmLogSource, VmService } from "@banger/gen/banger/v1/vm_pb.js";
import { VmState } from "@banger/gen/banger/v1/resources_pb.js";
import { timestampFromDate, type Duration } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { LISTENING_PORTS_ARGV, execInGuest, parseListeningPorts } from "../core/guest-exec.js";
import type { VmService as Vms } from "../core/vms.js";
import { operationToProto, snapshotToProto, vmToProto } from "./to-proto.js";
import { scopeOf } from "./scope.js";

const durationOf = (ms: number) => ({
  seconds: BigInt(Math.floor(ms / 1000)),
  nanos: Math.round((ms % 1000) * 1e6),
});

const millis = (duration: Duration | undefined): number | undefined =>
  duration === undefined ? undefined : Number(duration.seconds) * 1000 + Math.round(duration.nanos / 1e6);

/** `banger.v1.VmService`: the lifecycle (operations), set, list and get. */
export function createVmService(vms: Vms): ServiceImpl<typeof VmService> {
  return implementService(VmService, {
    async createVm(req, ctx) {
      const operation = await vms.create(
        {
          name: req.name,
          image: req.image,
          kernel: req.kernel,
          vcpu: req.vcpu,
          memoryMib: req.memoryMib,
          workDiskMib: Number(req.workDiskMib),
          nat: req.nat,
          skipSshWait: req.skipSshWait,
          sshTimeoutMs: millis(req.sshTimeout),
          publishedPorts: req.publishedPorts,
          fromSnapshot: req.fromSnapshot,
        },
        scopeOf(ctx),
      );
      return { operation: operationToProto(operation) };
    },
    async startVm(req) {
      const operation = await vms.start(req.name, {
        sshTimeoutMs: millis(req.sshTimeout),
        skipSshWait: req.skipSshWait,
      });
      return { operation: operationToProto(operation) };
    },
    async stopVm(req) {
      const operation = await vms.stop(req.name, { timeoutMs: millis(req.timeout), force: req.force, save: req.save });
      return { operation: operationToProto(operation) };
    },
    async restartVm(req) {
      const operation = await vms.restart(req.name, {
        timeoutMs: millis(req.timeout),
        force: req.force,
        skipSshWait: req.skipSshWait,
      });
      return { operation: operationToProto(operation) };
    },
    async deleteVm(req) {
      const { existed, operation } = await vms.delete(req.name);
      return { existed, operation: operationToProto(operation) };
    },
    async setVm(req) {
      const vm = await vms.set(req.name, {
        ...(req.vcpu !== undefined ? { vcpu: req.vcpu } : {}),
        ...(req.memoryMib !== undefined ? { memoryMib: req.memoryMib } : {}),
        ...(req.workDiskMib !== undefined ? { workDiskMib: Number(req.workDiskMib) } : {}),
        ...(req.nat !== undefined ? { nat: req.nat } : {}),
      });
      return { vm: vmToProto(vm) };
    },
    async listVms(req) {
      const all = (await vms.list()).map(vmToProto);
      return { vms: req.state === VmState.UNSPECIFIED ? all : all.filter((vm) => vm.state === req.state) };
    },
    async getVm(req) {
      return { vm: vmToProto(await vms.get(req.name)) };
    },
    async *vmLogs(req, ctx) {
      const source = req.source === VmLogSource.VMM ? "vmm" : "console";
      const log = await vms.logs(req.name, {
        source,
        tailLines: req.tailLines,
        follow: req.follow,
        signal: ctx.signal,
      });
      for await (const data of log) yield { data };
    },
    async vmStats(req) {
      const usage = await vms.stats(req.name);
      return {
        time: timestampFromDate(usage.time),
        cpuTime: durationOf(usage.cpuTimeMs),
        cpuPercent: usage.cpuPercent,
        memoryRssBytes: BigInt(usage.memoryRssBytes),
        rootDiskUsedBytes: BigInt(usage.rootDiskUsedBytes),
        workDiskUsedBytes: BigInt(usage.workDiskUsedBytes),
        uptime: durationOf(usage.uptimeMs),
      };
    },
    async vmPorts(req, ctx) {
      const target = await vms.guestTarget(req.name);
      let output = "";
      const exit = await execInGuest(
        target,
        { argv: LISTENING_PORTS_ARGV, env: [], workingDir: "/", user: "", stdin: new Uint8Array(), timeoutMs: 10_000 },
        { onStdout: (chunk) => (output += chunk.toString()), onStderr: () => undefined },
        ctx.signal,
      );
      if (exit.code !== 0) {
        throw new UnavailableError(`reading the guest's sockets failed (exit ${exit.code})`, {
          reason: "GUEST_UNREACHABLE",
        });
      }
      return { ports: parseListeningPorts(output) };
    },
    async vmSshTarget(req) {
      return vms.sshTarget(req.name);
    },
    async publishVmPort(req) {
      const port = req.port ?? { hostIp: "", hostPort: 0, guestPort: 0, protocol: "" };
      return { vm: vmToProto(await vms.publishPort(req.name, port)) };
    },
    async unpublishVmPort(req) {
      const { hostPort, protocol, hostIp } = req;
      return { vm: vmToProto(await vms.unpublishPort(req.name, { hostPort, protocol, hostIp })) };
    },
    async pauseVm(req) {
      return { vm: vmToProto(await vms.pause(req.name)) };
    },
    async resumeVm(req) {
      return { vm: vmToProto(await vms.resume(req.name)) };
    },
    async snapshotVm(req) {
      return { operation: operationToProto(await vms.snapshot(req.name, req.as)) };
    },
    async listSnapshots() {
      return { snapshots: (await vms.listSnapshots()).map(snapshotToProto) };
    },
    async getSnapshot(req) {
      return { snapshot: snapshotToProto(await vms.getSnapshot(req.name)) };
    },
    async deleteSnapshot(req) {
      return await vms.deleteSnapshot(req.name);
    },
  });
}
