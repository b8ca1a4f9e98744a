/**
 * A client for Firecracker's HTTP API on a VM's API socket (Firecracker ≥ 1.8):
 * the pre-boot configuration calls, the start and Ctrl+Alt+Del actions, the
 * instance state, and pause/resume.
 *
 * Errors: an answer other than 2xx is a FailedPreconditionError
 * `VMM_API_ERROR` whose message is `firecracker <METHOD> <path>: <fault_message>`,
 * Firecracker's own words; a socket that is missing or refuses connections is
 * an UnavailableError `VMM_API_UNREACHABLE` naming the socket; running out of
 * time is a DeadlineExceededError `VMM_API_TIMEOUT`; an aborted signal ends
 * the call with its reason (CancelledError unless the reason is banger's).
 */
import { request } from "node:http";
import { connect } from "node:net";
import {
  BangerError,
  CancelledError,
  DeadlineExceededError,
  FailedPreconditionError,
  UnavailableError,
} from "@banger/common";

export interface FirecrackerClientOptions {
  /** Deadline of each API request; default 5000 ms. */
  readonly timeoutMs?: number;
}

export interface FirecrackerCallOptions {
  readonly signal?: AbortSignal;
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
const POLL_INTERVAL_MS = 20;
const INSTANCE_STATES: readonly string[] = ["Not started", "Running", "Paused"] satisfies InstanceState[];

function isInstanceState(state: string): state is InstanceState {
  return INSTANCE_STATES.includes(state);
}

/** Connection failures that mean "nothing usable at that path", with a plain reading. */
const UNREACHABLE: Record<string, string> = {
  ENOENT: "no socket there",
  ECONNREFUSED: "nothing is listening",
  EACCES: "permission denied",
  ENOTSOCK: "not a socket",
  ECONNRESET: "connection reset",
  EPIPE: "connection closed",
};
/** Failures worth retrying while the VMM is still starting. */
const NOT_YET = new Set(["ENOENT", "ECONNREFUSED"]);

export function createFirecrackerClient(socketPath: string, options: FirecrackerClientOptions = {}): FirecrackerClient {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;

  const unreachable = (error: unknown) => {
    const code = errnoOf(error);
    const why = (code !== undefined && UNREACHABLE[code]) || (error instanceof Error ? error.message : String(error));
    return new UnavailableError(`Firecracker API socket ${socketPath} is unreachable: ${why}`, {
      reason: "VMM_API_UNREACHABLE",
      cause: error,
    });
  };

  /** One HTTP/1.1 exchange; resolves with the parsed JSON answer, or undefined for an empty one. */
  function call(method: string, path: string, body: unknown, callOptions: FirecrackerCallOptions = {}) {
    const { signal } = callOptions;
    const what = `firecracker ${method} ${path}`;
    return new Promise<unknown>((resolve, reject) => {
      if (signal?.aborted) {
        reject(abortError(signal, what));
        return;
      }
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const headers: Record<string, string | number> = { Accept: "application/json" };
      // Firecracker reads a body by its Content-Length (no chunked encoding).
      if (payload !== undefined) {
        headers["Content-Type"] = "application/json";
        headers["Content-Length"] = Buffer.byteLength(payload);
      }
      let settled = false;
      const finish = (outcome: () => void) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        outcome();
      };
      const req = request({ socketPath, method, path, headers, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("error", (error) => finish(() => reject(unreachable(error))));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          const status = res.statusCode ?? 0;
          finish(() => {
            if (status < 200 || status > 299) {
              reject(
                new FailedPreconditionError(`${what}: ${faultMessage(text, status)}`, { reason: "VMM_API_ERROR" }),
              );
              return;
            }
            if (text.trim() === "") {
              resolve(undefined);
              return;
            }
            try {
              resolve(JSON.parse(text));
            } catch (error) {
              reject(
                new FailedPreconditionError(`${what}: answered ${status} with a body that is not JSON`, {
                  reason: "VMM_API_ERROR",
                  cause: error,
                }),
              );
            }
          });
        });
      });
      const timer = setTimeout(() => {
        finish(() =>
          reject(
            new DeadlineExceededError(`${what}: no answer within ${timeoutMs} ms on ${socketPath}`, {
              reason: "VMM_API_TIMEOUT",
            }),
          ),
        );
        req.destroy();
      }, timeoutMs);
      const onAbort = () => {
        if (signal) finish(() => reject(abortError(signal, what)));
        req.destroy();
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      req.on("error", (error) => finish(() => reject(unreachable(error))));
      req.end(payload);
    });
  }

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

    async waitForSocket(signal, waitMs) {
      const deadline = Date.now() + waitMs;
      for (;;) {
        if (signal.aborted) throw abortError(signal, `waiting for ${socketPath}`);
        const error = await tryConnect(socketPath);
        if (error === undefined) return;
        const code = errnoOf(error);
        if (code === undefined || !NOT_YET.has(code)) throw unreachable(error);
        if (Date.now() >= deadline) {
          throw new DeadlineExceededError(`Firecracker API socket ${socketPath} did not appear within ${waitMs} ms`, {
            reason: "VMM_API_TIMEOUT",
            cause: unreachable(error),
          });
        }
        await sleep(Math.min(POLL_INTERVAL_MS, Math.max(0, deadline - Date.now())), signal);
      }
    },
  };
}

/** Firecracker's `fault_message`, or the raw answer when it is not the usual JSON. */
function faultMessage(text: string, status: number): string {
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed === "object" && parsed !== null && "fault_message" in parsed) {
      if (typeof parsed.fault_message === "string") return parsed.fault_message;
    }
  } catch {
    // not JSON: report it as it came
  }
  const trimmed = text.trim();
  return trimmed === "" ? `HTTP ${status}` : `HTTP ${status} ${trimmed.slice(0, 500)}`;
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

/** The error an aborted signal stands for: its reason when that is banger's, else a timeout or a cancellation. */
function abortError(signal: AbortSignal, what: string): BangerError {
  const reason: unknown = signal.reason;
  if (reason instanceof BangerError) return reason;
  if (reason instanceof Error && reason.name === "TimeoutError") {
    return new DeadlineExceededError(`${what}: timed out`, { reason: "VMM_API_TIMEOUT", cause: reason });
  }
  return new CancelledError(`${what}: cancelled`, { cause: reason });
}

function errnoOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/** Connects once and hangs up; resolves with the failure, or undefined when the socket accepted. */
function tryConnect(socketPath: string): Promise<Error | undefined> {
  return new Promise((resolve) => {
    const socket = connect(socketPath);
    socket.once("connect", () => {
      socket.destroy();
      resolve(undefined);
    });
    socket.once("error", (error) => {
      socket.destroy();
      resolve(error);
    });
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
