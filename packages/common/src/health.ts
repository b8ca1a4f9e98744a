import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "@banger/gen/health/v1/health_pb.js";

export type HealthStatus = "SERVING" | "NOT_SERVING";

/** What `grpc.health.v1.Health` reports; "" is the whole server. */
export interface HealthState {
  set(service: string, status: HealthStatus): void;
  /** Everything NOT_SERVING, and open Watch streams end: the server is going away. */
  shutdown(): void;
}

interface InternalHealthState extends HealthState {
  get(service: string): ServingStatus | undefined;
  entries(): [string, ServingStatus][];
  /** Calls `listener` on every change until the returned function is called. */
  subscribe(listener: () => void): () => void;
  readonly closed: boolean;
}

export function createHealthState(): HealthState {
  const statuses = new Map<string, ServingStatus>();
  const listeners = new Set<() => void>();
  let closed = false;
  const notify = () => {
    for (const listener of listeners) listener();
  };
  const state: InternalHealthState = {
    set(service, status) {
      statuses.set(service, status === "SERVING" ? ServingStatus.SERVING : ServingStatus.NOT_SERVING);
      notify();
    },
    shutdown() {
      for (const service of statuses.keys()) statuses.set(service, ServingStatus.NOT_SERVING);
      closed = true;
      notify();
    },
    get: (service) => statuses.get(service),
    entries: () => [...statuses.entries()],
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    get closed() {
      return closed;
    },
  };
  return state;
}

/** Serves gRPC health checking (Check, Watch, List) from `state`. */
export function registerHealth(router: ConnectRouter, state: HealthState): void {
  const health = state as InternalHealthState;
  router.service(Health, {
    check(req) {
      const status = health.get(req.service);
      // A protocol-level answer (grpc_health_probe and friends expect NOT_FOUND), whatever interceptors run.
      if (status === undefined) throw new ConnectError(`unknown service ${req.service}`, Code.NotFound);
      return { status };
    },
    list() {
      return { statuses: Object.fromEntries(health.entries().map(([service, status]) => [service, { status }])) };
    },
    async *watch(req, ctx) {
      // Per the health protocol: an unknown service streams SERVICE_UNKNOWN, not an error.
      let wake: () => void = () => {};
      const unsubscribe = health.subscribe(() => wake());
      const onAbort = () => wake();
      ctx.signal.addEventListener("abort", onAbort);
      try {
        let last: ServingStatus | undefined;
        for (;;) {
          const changed = new Promise<void>((resolve) => (wake = resolve));
          const status = health.get(req.service) ?? ServingStatus.SERVICE_UNKNOWN;
          if (status !== last) {
            last = status;
            yield { status };
            continue; // the status may have changed while the consumer had it: read it again
          }
          if (health.closed || ctx.signal.aborted) return;
          await changed;
        }
      } finally {
        unsubscribe();
        ctx.signal.removeEventListener("abort", onAbort);
      }
    },
  });
}
