/**
 * A client for Firecracker's HTTP API on a VM's API socket (Firecracker ≥ 1.8):
 * the pre-boot configuration calls, the start and Ctrl+Alt+Del actions, the
 * instance state, pause/resume, and Full snapshots (create and load).
 *
 * Errors: an answer other than 2xx is a FailedPreconditionError
 * `VMM_API_ERROR` whose message is `firecracker <METHOD> <path>: <fault_message>`,
 * Firecracker's own words; a socket that is missing or refuses connections is
 * an UnavailableError `VMM_API_UNREACHABLE` naming the socket; running out of
 * time is a DeadlineExceededError `VMM_API_TIMEOUT`; an aborted signal ends
 * the call with its reason (CancelledError unless the reason is banger's).
 */
import { FailedPreconditionError } from "@banger/common";
import {
  firecrackerCall,
  waitForFirecrackerSocket,
  type FirecrackerCallOptions,
  type FirecrackerEndpoint,
} from "./firecracker-http.js";

export type { FirecrackerCallOptions } from "./firecracker-http.js";

export interface FirecrackerClientOptions {
  /** Deadline of each API request; default 5000 ms. */
  readonly timeoutMs?: number;
}

export interface MachineConfig {
  /** 1–32. */
  readonly vcpuCount: number;
  readonly memSizeMib: number;
  /** Simultaneous multithreading; sent as false unless set. */
  readonly smt?: boolean;
}

export interface BootSource {
  readonly kernelImagePath: string;
  /** Firecracker uses its own default command line when absent. */
  readonly bootArgs?: string;
  readonly initrdPath?: string;
}

export interface Drive {
  /** Letters, digits and underscores only (Firecracker's rule for API ids). */
  readonly driveId: string;
  /** A file or block device; Firecracker opens it read-write unless `isReadOnly`. */
  readonly pathOnHost: string;
  readonly isRootDevice: boolean;
  readonly isReadOnly: boolean;
}

export interface NetworkInterface {
  /** Letters, digits and underscores only. */
  readonly ifaceId: string;
  /** An existing tap the VMM's user may open; at most 15 bytes. */
  readonly hostDevName: string;
  /** `xx:xx:xx:xx:xx:xx`. */
  readonly guestMac?: string;
}

export interface Vsock {
  readonly guestCid: number;
  /** Firecracker binds this Unix socket when the device is configured: it must not exist. */
  readonly udsPath: string;
}

/** A snapshot's two files: the microVM's device state and the guest's memory. */
export interface SnapshotFiles {
  readonly snapshotPath: string;
  readonly memFilePath: string;
}

/**
 * How a snapshot is loaded: `resumeVm` runs the guest at once; a fork gives its own tap
 * (`network_overrides`, Firecracker ≥ 1.12) and vsock socket (`vsock_override`) in place of those the
 * snapshot names.
 */
export interface SnapshotLoadOptions {
  readonly resumeVm: boolean;
  readonly networkOverrides?: readonly { readonly ifaceId: string; readonly hostDevName: string }[];
  readonly vsockUdsPath?: string;
}

export type InstanceState = "Not started" | "Running" | "Paused";

export interface InstanceInfo {
  readonly id: string;
  readonly state: InstanceState;
  readonly vmmVersion: string;
  readonly appName: string;
}

export interface FirecrackerClient {
  readonly socketPath: string;
  putMachineConfig(config: MachineConfig, options?: FirecrackerCallOptions): Promise<void>;
  putBootSource(source: BootSource, options?: FirecrackerCallOptions): Promise<void>;
  putDrive(drive: Drive, options?: FirecrackerCallOptions): Promise<void>;
  putNetworkInterface(iface: NetworkInterface, options?: FirecrackerCallOptions): Promise<void>;
  putVsock(vsock: Vsock, options?: FirecrackerCallOptions): Promise<void>;
  /** Boots the configured guest; refused without a boot source or a second time. */
  instanceStart(options?: FirecrackerCallOptions): Promise<void>;
  /** Asks a running guest to shut down (x86_64); Firecracker exits when it has. */
  sendCtrlAltDel(options?: FirecrackerCallOptions): Promise<void>;
  pause(options?: FirecrackerCallOptions): Promise<void>;
  /** PUT /snapshot/create, a Full snapshot of a paused guest: its device state and its memory, in two files. */
  createSnapshot(files: SnapshotFiles, options?: FirecrackerCallOptions): Promise<void>;
  /** PUT /snapshot/load into a fresh Firecracker (nothing configured); the guest runs when `load.resumeVm`. */
  loadSnapshot(files: SnapshotFiles, load: SnapshotLoadOptions, options?: FirecrackerCallOptions): Promise<void>;
  /** PATCH /drives/{id} after boot (or a load): the drive's backing file becomes `pathOnHost`. */
  patchDrive(driveId: string, pathOnHost: string, options?: FirecrackerCallOptions): Promise<void>;
  resume(options?: FirecrackerCallOptions): Promise<void>;
  /** GET /: the instance id, its state and the Firecracker version. */
  describeInstance(options?: FirecrackerCallOptions): Promise<InstanceInfo>;
  /**
   * Resolves once the API socket accepts connections (it appears a moment
   * after the VMM is launched); DeadlineExceededError after `timeoutMs`.
   */
  waitForSocket(signal: AbortSignal, timeoutMs: number): Promise<void>;
}

const DEFAULT_TIMEOUT_MS = 5000;
const INSTANCE_STATES: readonly string[] = ["Not started", "Running", "Paused"] satisfies InstanceState[];

function isInstanceState(state: string): state is InstanceState {
  return INSTANCE_STATES.includes(state);
}

export function createFirecrackerClient(socketPath: string, options: FirecrackerClientOptions = {}): FirecrackerClient {
  const endpoint: FirecrackerEndpoint = { socketPath, timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS };
  const call = (method: string, path: string, body: unknown, callOptions?: FirecrackerCallOptions) =>
    firecrackerCall(endpoint, method, path, body, callOptions);

  const put = async (path: string, body: object, callOptions?: FirecrackerCallOptions) => {
    await call("PUT", path, body, callOptions);
  };

  return {
    socketPath,

    putMachineConfig: (config, callOptions) =>
      put(
        "/machine-config",
        { vcpu_count: config.vcpuCount, mem_size_mib: config.memSizeMib, smt: config.smt ?? false },
        callOptions,
      ),

    putBootSource: (source, callOptions) =>
      put(
        "/boot-source",
        {
          kernel_image_path: source.kernelImagePath,
          ...(source.bootArgs === undefined ? {} : { boot_args: source.bootArgs }),
          ...(source.initrdPath === undefined ? {} : { initrd_path: source.initrdPath }),
        },
        callOptions,
      ),

    putDrive: (drive, callOptions) =>
      put(
        `/drives/${encodeURIComponent(drive.driveId)}`,
        {
          drive_id: drive.driveId,
          path_on_host: drive.pathOnHost,
          is_root_device: drive.isRootDevice,
          is_read_only: drive.isReadOnly,
        },
        callOptions,
      ),

    putNetworkInterface: (iface, callOptions) =>
      put(
        `/network-interfaces/${encodeURIComponent(iface.ifaceId)}`,
        {
          iface_id: iface.ifaceId,
          host_dev_name: iface.hostDevName,
          ...(iface.guestMac === undefined ? {} : { guest_mac: iface.guestMac }),
        },
        callOptions,
      ),

    putVsock: (vsock, callOptions) =>
      put("/vsock", { guest_cid: vsock.guestCid, uds_path: vsock.udsPath }, callOptions),

    instanceStart: (callOptions) => put("/actions", { action_type: "InstanceStart" }, callOptions),

    sendCtrlAltDel: (callOptions) => put("/actions", { action_type: "SendCtrlAltDel" }, callOptions),

    pause: async (callOptions) => {
      await call("PATCH", "/vm", { state: "Paused" }, callOptions);
    },

    resume: async (callOptions) => {
      await call("PATCH", "/vm", { state: "Resumed" }, callOptions);
    },

    createSnapshot: (files, callOptions) =>
      put(
        "/snapshot/create",
        { snapshot_type: "Full", snapshot_path: files.snapshotPath, mem_file_path: files.memFilePath },
        callOptions,
      ),

    loadSnapshot: (files, load, callOptions) =>
      put(
        "/snapshot/load",
        {
          snapshot_path: files.snapshotPath,
          mem_backend: { backend_type: "File", backend_path: files.memFilePath },
          resume_vm: load.resumeVm,
          ...(load.networkOverrides
            ? {
                network_overrides: load.networkOverrides.map((o) => ({
                  iface_id: o.ifaceId,
                  host_dev_name: o.hostDevName,
                })),
              }
            : {}),
          ...(load.vsockUdsPath ? { vsock_override: { uds_path: load.vsockUdsPath } } : {}),
        },
        callOptions,
      ),

    patchDrive: async (driveId, pathOnHost, callOptions) => {
      await call(
        "PATCH",
        `/drives/${encodeURIComponent(driveId)}`,
        { drive_id: driveId, path_on_host: pathOnHost },
        callOptions,
      );
    },

    async describeInstance(callOptions) {
      const answer = await call("GET", "/", undefined, callOptions);
      const info = toInstanceInfo(answer);
      if (info === undefined) {
        throw new FailedPreconditionError(`firecracker GET /: unexpected instance info ${JSON.stringify(answer)}`, {
          reason: "VMM_API_ERROR",
        });
      }
      return info;
    },

    waitForSocket: (signal, waitMs) => waitForFirecrackerSocket(socketPath, signal, waitMs),
  };
}

function toInstanceInfo(answer: unknown): InstanceInfo | undefined {
  if (typeof answer !== "object" || answer === null) return undefined;
  const { id, state, vmm_version: vmmVersion, app_name: appName } = answer as Record<string, unknown>;
  if (typeof id !== "string" || typeof state !== "string" || !isInstanceState(state)) return undefined;
  return {
    id,
    state,
    vmmVersion: typeof vmmVersion === "string" ? vmmVersion : "",
    appName: typeof appName === "string" ? appName : "",
  };
}
