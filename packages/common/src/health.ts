/**
 * gRPC health checking (grpc.health.v1.Health): Check, Watch and List, as
 * described in https://github.com/grpc/grpc/blob/master/doc/health-checking.md.
 */
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "@banger/gen/health/v1/health_pb.js";

export type HealthStatus = "SERVING" | "NOT_SERVING";

/** The serving status of the whole server ("") and of each service. */
export interface HealthState {
  set(service: string, status: HealthStatus): void;
  /** The server is going away: everything NOT_SERVING for good, open Watch streams end. */
  shutdown(): void;
  /** The status of `service`, undefined if it was never set. */
  get(service: string): HealthStatus | undefined;
  /** Every service with its status. */
  list(): ReadonlyMap<string, HealthStatus>;
  /** Resolves at the next set() or shutdown(), or when `signal` aborts. */
  nextChange(signal: AbortSignal): Promise<void>;
  readonly isShutdown: boolean;
}

/**
 * The server itself ("") starts SERVING, as in grpc-go and grpc-java: a client
 * that reaches the health service has reached the server.
 */
export function createHealthState(): HealthState {
  const statuses = new Map<string, HealthStatus>([["", "SERVING"]]);
  const listeners = new Set<() => void>();
  let isShutdown = false;
  const notify = () => {
    for (const listener of listeners) listener();
  };
  return {
    set(service, status) {
      // As in grpc-go: after shutdown a late set() must not report a dying server as SERVING.
      if (isShutdown) return;
      statuses.set(service, status);
      notify();
    },
    shutdown() {
      isShutdown = true;
      for (const service of statuses.keys()) statuses.set(service, "NOT_SERVING");
      notify();
    },
    get: (service) => statuses.get(service),
    list: () => new Map(statuses),
    nextChange(signal) {
      return new Promise((resolve) => {
        const done = () => {
          listeners.delete(done);
          signal.removeEventListener("abort", done);
          resolve();
        };
        listeners.add(done);
        signal.addEventListener("abort", done);
      });
    },
    get isShutdown() {
      return isShutdown;
    },
  };
}

/** Unknown to Check is an error; Watch streams it as SERVICE_UNKNOWN. */
function statusToProto(status: HealthStatus | undefined): ServingStatus {
  if (status === undefined) return ServingStatus.SERVICE_UNKNOWN;
  return status === "SERVING" ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
}

/** Serves grpc.health.v1.Health (Check, Watch, List) from `state`. */
export function registerHealth(router: ConnectRouter, state: HealthState): void {
  router.service(Health, {
    check(req) {
      const status = state.get(req.service);
      // NOT_FOUND is what grpc_health_probe and other clients expect for an unknown service.
      if (status === undefined) throw new ConnectError(`unknown service ${req.service}`, Code.NotFound);
      return { status: statusToProto(status) };
    },
    list() {
      const statuses: Record<string, { status: ServingStatus }> = {};
      for (const [service, status] of state.list()) statuses[service] = { status: statusToProto(status) };
      return { statuses };
    },
    async *watch(req, ctx) {
      let last: ServingStatus | undefined;
      for (;;) {
        const status = statusToProto(state.get(req.service));
        if (status !== last) {
          last = status;
          yield { status };
          // The status may have changed while the client was reading: look again before waiting.
          continue;
        }
        if (state.isShutdown || ctx.signal.aborted) return;
        await state.nextChange(ctx.signal);
      }
    },
  });
}
