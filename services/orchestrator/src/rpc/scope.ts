import type { HandlerContext } from "@connectrpc/connect";
import type { CallScope } from "../core/call-scope.js";

/** The handler's cancellation and deadline, for core code and outbound calls. */
export function scopeOf(ctx: HandlerContext): CallScope {
  return { signal: ctx.signal, timeoutMs: ctx.timeoutMs() };
}
