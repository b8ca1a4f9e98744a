import type { CallOptions } from "@connectrpc/connect";
import type { CallScope } from "../core/call-scope.js";

/** Forwards the caller's cancellation and remaining deadline to a downstream call. */
export function callOptions(scope: CallScope): CallOptions {
  return scope.timeoutMs === undefined
    ? { signal: scope.signal }
    : { signal: scope.signal, timeoutMs: scope.timeoutMs };
}
