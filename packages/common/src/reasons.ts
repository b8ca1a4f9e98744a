/**
 * Error reasons: the stable UPPER_SNAKE codes an error carries beside its
 * gRPC code. Each reason is declared once, in a `… as const` list that tests
 * can read at run time:
 *
 * - here, COMMON_REASONS: what common's own code throws (the error classes'
 *   defaults, the host runner, the registry client, sockets);
 * - here, SHARED_REASONS: what one service throws and another matches or
 *   promises in its proto comments (the helper's VMM_RUNNING, seen by the
 *   orchestrator);
 * - in each service's `src/reasons.ts`: the reasons only it throws. That
 *   module adds its list to `ServiceReasons` (declaration merging), so in a
 *   service's build `Reason` is common's, the shared and its own, and a
 *   `reason:` outside them fails `tsc`.
 *
 * A comparison names the reason through the constants (`SharedReason.VMM_RUNNING`),
 * never a string literal.
 */

/** `{ A: "A", … }` for a list of reasons: constants to compare with. */
export function reasonConstants<const L extends readonly string[]>(list: L): { readonly [R in L[number]]: R } {
  return Object.freeze(Object.fromEntries(list.map((reason) => [reason, reason]))) as { readonly [R in L[number]]: R };
}

export const COMMON_REASONS = [
  // The error classes' defaults, one per kind.
  "INVALID_ARGUMENT",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "FAILED_PRECONDITION",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "UNAVAILABLE",
  "DEADLINE_EXCEEDED",
  "CANCELLED",
  "UNIMPLEMENTED",
  "INTERNAL",
  // A method a service does not implement (service-impl.ts).
  "NOT_IMPLEMENTED",
  // The host runner.
  "HOST_COMMAND_FAILED",
  "HOST_OUTPUT_TOO_LARGE",
  "HOST_TOOL_MISSING",
  // Static busybox lookup.
  "BUSYBOX_MISSING",
  "BUSYBOX_NOT_STATIC",
  // Sockets and service startup.
  "ACTIVATED_SOCKET_MISMATCH",
  "ALREADY_RUNNING",
  "SOCKET_DIR_UNSAFE",
  "SOCKET_PATH_OCCUPIED",
  "SOCKET_PATH_TOO_LONG",
  // The registry client's references and credentials.
  "INVALID_REFERENCE",
  "INVALID_DOCKER_CONFIG",
  "CREDENTIAL_HELPER_FAILED",
] as const;
export type CommonReason = (typeof COMMON_REASONS)[number];
export const CommonReason = reasonConstants(COMMON_REASONS);

export const SHARED_REASONS = [
  // The helper's, matched or promised by the orchestrator.
  "VMM_RUNNING",
  "NOT_IN_POOL",
  "VMM_EXITED",
  // The puller's, matched by the orchestrator.
  "REGISTRY_UNREACHABLE",
] as const;
export type SharedReason = (typeof SHARED_REASONS)[number];
export const SharedReason = reasonConstants(SHARED_REASONS);

/**
 * The reasons of the service being built: each service's `src/reasons.ts`
 * merges its own list in (`interface ServiceReasons extends Record<…, true> {}`).
 * Empty in common's own build.
 */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type -- filled by declaration merging
export interface ServiceReasons {}

/** A reason this build may throw: common's, the shared ones, and its service's own. */
// eslint-disable-next-line @typescript-eslint/no-redundant-type-constituents -- `never` only in common's own build
export type Reason = CommonReason | SharedReason | keyof ServiceReasons;
