/**
 * The VMM is a driver: the VM lifecycle boots the same kernel, initrd, disks
 * and tap through either one, in the same stages (launch-vmm, configure-vmm,
 * start-vmm) and stops it the same way (a graceful request, then signals).
 *
 * - `firecracker`: the helper starts it with only its API socket; the machine
 *   is configured over the API, then started.
 * - `qemu-microvm`: the helper starts `qemu-system-x86_64 -M microvm` with the
 *   whole machine on its command line (KVM when the host has it, else TCG);
 *   configure-vmm is the QMP handshake and a check that the machine runs.
 *   QEMU has no vsock here (no vhost-vsock on the hosts it serves).
 *
 * Each also says how to reach the guest agent of banger's guest kit:
 * Firecracker's hybrid vsock socket (`vsock.sock`, `CONNECT 1024`), QEMU's
 * virtio-serial port socket (`agent.sock`, made by the helper's argv).
 */
import { dirname, join } from "node:path";
import { rm } from "node:fs/promises";
import { FailedPreconditionError } from "@banger/common";
import { vmRuntimeFiles } from "@banger/common/layout";
import type { CallScope } from "../core/call-scope.js";
import type { HostPort, VmmDriver, VmmPorts } from "../core/ports.js";
import type { FirecrackerClient } from "./firecracker-client.js";
import type { QmpClient } from "./qmp-client.js";
import { createAgentClient, hybridVsockConnector, unixAgentConnector } from "./agent-client.js";
import { AGENT_VSOCK_PORT } from "../guest/kit.js";

/** The Firecracker API as the lifecycle uses it. */
export type FirecrackerApi = Pick<
  FirecrackerClient,
  | "waitForSocket"
  | "putMachineConfig"
  | "putBootSource"
  | "putDrive"
  | "putNetworkInterface"
  | "putVsock"
  | "instanceStart"
  | "sendCtrlAltDel"
  | "pause"
  | "resume"
  | "describeInstance"
  | "createSnapshot"
  | "loadSnapshot"
  | "patchDrive"
>;

export type QmpApi = Pick<
  QmpClient,
  "waitForSocket" | "status" | "powerdown" | "stop" | "cont" | "migrate" | "queryMigrate" | "incoming" | "setLink"
>;

export type { MachineSpec, VmmDriver } from "../core/ports.js";

const SOCKET_WAIT_MS = 5_000;

/** The QEMU migration stream in a VM's saved-state directory. */
const QEMU_MIGRATION = "migration";
const MIGRATION_POLL_MS = 25;
/** How long a saved state may take to load (a large memory streams for a while). */
const INCOMING_TIMEOUT_MS = 300_000;

const shellQuote = (text: string) => `'${text.replace(/'/g, `'\\''`)}'`;

/** Waits `ms`, or throws when `signal` aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason instanceof Error ? signal.reason : new Error("aborted"));
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** The id of the guest's network device in the helper's QEMU argv (services/privileged ops/vmm/argv.ts). */
const QEMU_NETDEV = "net0";

/** A Firecracker snapshot's two files in a VM's saved-state directory. */
const firecrackerSnapshot = (dir: string) => ({ snapshotPath: join(dir, "vmstate"), memFilePath: join(dir, "memory") });

export function firecrackerDriver(host: HostPort, api: (socketPath: string) => FirecrackerApi): VmmDriver {
  return {
    kind: "firecracker",
    // reboot=k: a guest reboot makes Firecracker exit (it has a keyboard controller for that).
    kernelArgs: "console=ttyS0 reboot=k panic=1 pci=off",
    launch: (spec, scope) => host.launchFirecracker(spec.vmId, scope),
    async configure(launched, spec, signal) {
      const fc = api(launched.controlSocket);
      await fc.waitForSocket(signal, SOCKET_WAIT_MS);
      await fc.putMachineConfig({ vcpuCount: spec.vcpu, memSizeMib: spec.memoryMib, smt: false });
      await fc.putBootSource({
        kernelImagePath: spec.kernelPath,
        bootArgs: spec.bootArgs,
        ...(spec.initrdPath ? { initrdPath: spec.initrdPath } : {}),
      });
      await fc.putDrive({ driveId: "root", pathOnHost: spec.rootDisk, isRootDevice: true, isReadOnly: false });
      await fc.putDrive({ driveId: "work", pathOnHost: spec.workDisk, isRootDevice: false, isReadOnly: false });
      await fc.putNetworkInterface({ ifaceId: "eth0", hostDevName: spec.tap, guestMac: spec.mac });
      // Firecracker binds the vsock socket itself and refuses one left by an earlier boot.
      const udsPath = vmRuntimeFiles(dirname(launched.controlSocket)).vsockSocket;
      await rm(udsPath, { force: true });
      await fc.putVsock({ guestCid: spec.vsockCid, udsPath });
    },
    start: (launched) => api(launched.controlSocket).instanceStart(),
    requestShutdown: (controlSocket) => api(controlSocket).sendCtrlAltDel(),
    agent: (controlSocket) =>
      hybridVsockConnector(vmRuntimeFiles(dirname(controlSocket)).vsockSocket, AGENT_VSOCK_PORT),
    pause: (controlSocket) => api(controlSocket).pause(),
    resume: (controlSocket) => api(controlSocket).resume(),
    paused: async (controlSocket) => (await api(controlSocket).describeInstance()).state === "Paused",
    async save(controlSocket, dir, signal, disks) {
      const fc = api(controlSocket);
      if (!disks) return fc.createSnapshot(firecrackerSnapshot(dir), { signal });
      // The device state names the drives' files, which a load opens: the snapshot's copies, which live as
      // long as it does. The guest is paused: it writes nothing while its drives point there; they point
      // back at its own before it runs on, whatever happened.
      await fc.patchDrive("root", disks.copies.rootDisk, { signal });
      try {
        await fc.patchDrive("work", disks.copies.workDisk, { signal });
        await fc.createSnapshot(firecrackerSnapshot(dir), { signal });
      } finally {
        await fc.patchDrive("root", disks.own.rootDisk);
        await fc.patchDrive("work", disks.own.workDisk);
      }
    },
    async restore(launched, dir, signal, fork) {
      const fc = api(launched.controlSocket);
      await fc.waitForSocket(signal, SOCKET_WAIT_MS);
      // Firecracker binds the vsock socket at load and refuses one left by an earlier run.
      const vsock = vmRuntimeFiles(dirname(launched.controlSocket)).vsockSocket;
      await rm(vsock, { force: true });
      if (!fork) return fc.loadSnapshot(firecrackerSnapshot(dir), { resumeVm: true }, { signal });
      // A fork: its own tap and vsock socket at load, its own disks before the guest runs on.
      await fc.loadSnapshot(
        firecrackerSnapshot(dir),
        { resumeVm: false, networkOverrides: [{ ifaceId: "eth0", hostDevName: fork.tap }], vsockUdsPath: vsock },
        { signal },
      );
      await fc.patchDrive("root", fork.rootDisk, { signal });
      await fc.patchDrive("work", fork.workDisk, { signal });
      await fc.resume({ signal });
    },
    // Firecracker has no link control: a fork's guest is on its tap from its resume.
    setLink: () => Promise.resolve(false),
    holdsLink: false,
  };
}

export function qemuDriver(
  host: HostPort,
  qmp: (socketPath: string) => QmpApi,
  /** Whether the host has usable KVM now (the helper's probe). */
  kvm: (scope: CallScope) => Promise<boolean>,
): VmmDriver {
  return {
    kind: "qemu-microvm",
    // microvm has no keyboard controller: reboot=k takes seconds to give up, reboot=t (triple fault) is at once.
    kernelArgs: "console=ttyS0 reboot=t panic=1",
    async launch(spec, scope) {
      return host.launchQemu(
        spec.vmId,
        {
          vcpu: spec.vcpu,
          memoryMib: spec.memoryMib,
          kernelPath: spec.kernelPath,
          initrdPath: spec.initrdPath ?? "",
          bootArgs: spec.bootArgs,
          rootDisk: spec.rootDisk,
          workDisk: spec.workDisk,
          mac: spec.mac,
          kvm: await kvm(scope),
          incoming: spec.incoming === true,
        },
        scope,
      );
    },
    async configure(launched, _spec, signal) {
      const client = qmp(launched.controlSocket);
      await client.waitForSocket(signal, SOCKET_WAIT_MS);
      const { running, status } = await client.status();
      if (!running) {
        throw new FailedPreconditionError(`qemu is not running the machine: status ${status}`, {
          reason: "VMM_NOT_RUNNING",
        });
      }
    },
    // QEMU runs the machine from its start: nothing to do.
    start: () => Promise.resolve(),
    requestShutdown: (controlSocket) => qmp(controlSocket).powerdown(),
    agent: (controlSocket) => unixAgentConnector(vmRuntimeFiles(dirname(controlSocket)).agentSocket),
    pause: (controlSocket) => qmp(controlSocket).stop(),
    resume: (controlSocket) => qmp(controlSocket).cont(),
    paused: async (controlSocket) => (await qmp(controlSocket).status()).status === "paused",
    // QEMU 7.2 (Debian bookworm) has no file: migration URI: a shell's cat writes and reads the file (QEMU runs
    // it, as the owner). The path is the orchestrator's own (the VM's state directory), quoted for the shell.
    async save(controlSocket, dir, signal) {
      const client = qmp(controlSocket);
      await client.migrate(`exec:cat > ${shellQuote(join(dir, QEMU_MIGRATION))}`);
      for (;;) {
        const { status, error } = await client.queryMigrate();
        if (status === "completed") return;
        if (status === "failed" || status === "cancelled") {
          throw new FailedPreconditionError(`qemu migrate: ${status}${error ? `: ${error}` : ""}`, {
            reason: "VMM_API_ERROR",
          });
        }
        await pause(MIGRATION_POLL_MS, signal);
      }
    },
    // A fork's argv names its own disks and tap already: the migration stream carries device state only.
    async restore(launched, dir, signal, fork) {
      const client = qmp(launched.controlSocket);
      await client.waitForSocket(signal, SOCKET_WAIT_MS);
      // One QMP session (QEMU serves one client at a time; each new one costs a greeting and a handshake).
      const state = await client.incoming(`exec:cat ${shellQuote(join(dir, QEMU_MIGRATION))}`, {
        // After an incoming migration QEMU announces the NIC's MAC (RARP, then the guest's own gratuitous ARP): a
        // fork's is its source's until its identity is changed, and the bridge would send the source's traffic here.
        ...(fork ? { parameters: { "announce-rounds": 0 } } : {}),
        // A fork's guest still has its source's address: no packet passes until its identity is its own. The
        // guest was paused when it was saved: it comes back paused, and runs after that.
        ...(fork ? { linkDown: QEMU_NETDEV } : {}),
        timeoutMs: INCOMING_TIMEOUT_MS,
        signal,
      });
      if (!state.running) {
        throw new FailedPreconditionError(`qemu did not take the saved state: status ${state.status}`, {
          reason: "VMM_NOT_RUNNING",
        });
      }
    },
    holdsLink: true,
    async setLink(controlSocket, up) {
      await qmp(controlSocket).setLink(QEMU_NETDEV, up);
      return true;
    },
  };
}

/**
 * Both VMMs over the helper (`host`) and their API clients, and the guest
 * agent's client: what the VM lifecycle is given (the composition root builds it).
 */
export function createVmmPorts(
  host: HostPort,
  firecracker: (socketPath: string) => FirecrackerApi,
  qmp: (socketPath: string) => QmpApi,
): VmmPorts {
  return {
    drivers: {
      firecracker: firecrackerDriver(host, firecracker),
      "qemu-microvm": qemuDriver(host, qmp, async (scope) => (await host.features(scope)).kvm),
    },
    agentClient: createAgentClient,
  };
}
