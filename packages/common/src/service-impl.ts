import type { DescService } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { UnimplementedError } from "./errors.js";

/**
 * A complete implementation of `service` from the methods written so far:
 * every other RPC answers UNIMPLEMENTED with a message naming it, so a
 * client can tell "not built yet" from a bug.
 */
export function implementService<S extends DescService>(
  service: S,
  implemented: Partial<ServiceImpl<S>>,
): ServiceImpl<S> {
  const full: Record<string, unknown> = { ...implemented };
  for (const method of service.methods) {
    if (full[method.localName] !== undefined) continue;
    const error = () =>
      new UnimplementedError(`${service.typeName}/${method.name} is not implemented yet`, {
        reason: "NOT_IMPLEMENTED",
      });
    full[method.localName] =
      method.methodKind === "unary" || method.methodKind === "client_streaming"
        ? () => Promise.reject(error())
        : () => failingStream(error());
  }
  return full as ServiceImpl<S>;
}

/** A stream that fails before its first message. */
function failingStream(error: Error): AsyncIterable<never> {
  return { [Symbol.asyncIterator]: () => ({ next: () => Promise.reject(error) }) };
}
