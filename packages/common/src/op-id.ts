import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes } from "node:crypto";

/** The header that carries the op id on every request and response. */
export const OP_ID_HEADER = "banger-op-id";

const OP_ID_PATTERN = /^op-[0-9a-f]{12}$/;

/** Who called, as the kernel says (SO_PEERCRED), where the server asks. */
export interface PeerCredentials {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
}

/** The context every piece of work runs in: who it is for, across all three services. */
export interface OpContext {
  readonly opId: string;
  readonly peer?: PeerCredentials | undefined;
}

const storage = new AsyncLocalStorage<OpContext>();

/** A new op id: `op-` + 12 lowercase hex digits (48 random bits). */
export function mintOpId(): string {
  return `op-${randomBytes(6).toString("hex")}`;
}

export function isOpId(value: unknown): value is string {
  return typeof value === "string" && OP_ID_PATTERN.test(value);
}

/**
 * The op id to use for an inbound request: the caller's, when it sent a
 * well-formed one, else a fresh one. A malformed header is dropped without
 * being echoed anywhere (it is attacker-controlled text).
 */
export function adoptOrMintOpId(inbound: string | readonly string[] | null | undefined): string {
  const value = typeof inbound === "string" || inbound == null ? inbound : inbound[0];
  return isOpId(value) ? value : mintOpId();
}

/** Runs `fn` with `opId` as the current op id (for the whole async call tree). */
export function runWithOpId<T>(opId: string, fn: () => T, peer?: PeerCredentials): T {
  return storage.run({ opId, peer }, fn);
}

/** The credentials of the caller of the RPC in progress, where the server read them. */
export function currentPeer(): PeerCredentials | undefined {
  return storage.getStore()?.peer;
}

/** The op id of the work in progress, if any. */
export function currentOpId(): string | undefined {
  return storage.getStore()?.opId;
}
