/**
 * SSH connections to guests, and the ones kept open between commands. A new connection costs a guest
 * under TCG about 200 ms (dropbear re-executes itself, the key exchange, checking banger's key); a
 * command on an open one 25-65 ms. So a connection made for a command stays open for the next one to
 * the same guest boot (`GuestTarget.reuse.key`: the VM's id, its VMM's pid and start time) until it has
 * been unused for IDLE_MS, breaks, the command on it ended abnormally, or the VM stops (`closeGuest`).
 * A kept connection's host key was checked when it was made. A create warms one as soon as the guest's
 * SSH answers. At most MAX_CHANNELS commands share one; more get a connection of their own, closed after
 * their command.
 *
 * A command whose channel cannot be opened on a kept connection (the guest restarted inside, the
 * connection died unnoticed: no answer within OPEN_MS) has not run: the guest runs it only once the
 * channel is open. It is tried once more, on a connection of its own (execInGuest); the next command
 * makes a new kept one.
 */
import { createHash } from "node:crypto";
import { appendFile, mkdir, readFile } from "node:fs/promises";
import { dirname } from "node:path";
import { FailedPreconditionError, UnavailableError } from "@banger/common";
import type { Client } from "ssh2";
import { newSshClient } from "./ssh2-client.js";

export interface GuestTarget {
  readonly host: string;
  readonly port: number;
  /** The name the host key is pinned under, `<vm>.vm`. */
  readonly hostKeyAlias: string;
  readonly privateKey: Buffer;
  readonly knownHostsFile: string;
  /** Where commands may share a kept connection: `key` names the guest's boot. */
  readonly reuse?: { readonly key: string; readonly connections: GuestConnections };
}

const CONNECT_TIMEOUT_MS = 10_000;
/** A kept connection unused this long is closed (the guest's SSH server keeps a process per connection). */
export const IDLE_MS = 60_000;
const MAX_CHANNELS = 8;
/** How long a kept connection may take to open a command's channel before it is taken for dead. */
export const OPEN_MS = 5_000;

/** A connection to use for one command: `release` when the command is over (`broken`: close it). */
export interface GuestLease {
  readonly client: Client;
  /** From the kept ones (so possibly stale), rather than made for this command. */
  readonly kept: boolean;
  /** How long the command's channel may take to open (a kept connection only: a dead one may not say so). */
  readonly openMs?: number;
  release(broken: boolean): void;
}

export interface GuestConnections {
  /** A ready connection to `target`: a kept one when `target.reuse` names one, else a new one. */
  lease(target: GuestTarget, signal: AbortSignal): Promise<GuestLease>;
  /** A connection of the command's own, never shared and closed after it (the retry of a command a kept one failed). */
  fresh(target: GuestTarget, signal: AbortSignal): Promise<GuestLease>;
  /** Starts connecting to `target` to keep the connection, when none is kept yet; failures are forgotten. */
  warm(target: GuestTarget): void;
  /** As `warm`, then waits for the kept connection: settles once it is ready, or with why it could not be made. */
  connect(target: GuestTarget, signal: AbortSignal): Promise<void>;
  /**
   * Closes the connections kept to `vmId`'s guest (its boots' keys start with `<vmId>/`): it stopped or went.
   * Settles once a connection being made meanwhile has given up (its host key check over).
   */
  closeGuest(vmId: string): Promise<void>;
  /** How many connections are kept (tests). */
  readonly size: number;
  /** Closes every kept connection. */
  close(): void;
}

interface Kept {
  /** `GuestTarget.reuse.key`: the guest boot it goes to. */
  readonly boot: string;
  readonly client: Promise<Client>;
  /** Gives up the connection while it is being made. */
  readonly stop: AbortController;
  users: number;
  idle: NodeJS.Timeout | undefined;
}

/** Checks the guest's host key against the pinned one, pinning it on first contact. */
export async function verifyHostKey(target: GuestTarget, key: Buffer): Promise<void> {
  const presented = key.toString("base64");
  let pinned: string | undefined;
  try {
    for (const line of (await readFile(target.knownHostsFile, "utf8")).split("\n")) {
      const [names = "", , blob] = line.split(" ");
      if (names.split(",").includes(target.hostKeyAlias)) pinned = blob;
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  if (pinned === undefined) {
    const type = key.subarray(4, 4 + key.readUInt32BE(0)).toString();
    await mkdir(dirname(target.knownHostsFile), { recursive: true, mode: 0o700 });
    await appendFile(target.knownHostsFile, `${target.hostKeyAlias} ${type} ${presented}\n`, { mode: 0o600 });
    return;
  }
  if (pinned !== presented) {
    throw new FailedPreconditionError(
      `the host key of ${target.hostKeyAlias} is not the one pinned in ${target.knownHostsFile}; if the guest was rebuilt, remove its line there`,
      { reason: "HOST_KEY_MISMATCH" },
    );
  }
}

/** UNAVAILABLE GUEST_UNREACHABLE: the guest at `target` cannot be reached, or was lost, for `why`. */
export function guestUnreachable(target: GuestTarget, why: string, cause?: unknown): UnavailableError {
  return new UnavailableError(`cannot reach the guest at ${target.host}:${target.port}: ${why}`, {
    reason: "GUEST_UNREACHABLE",
    ...(cause === undefined ? {} : { cause }),
  });
}

/** A connection of one command's own, closed when it is released. */
export async function freshLease(target: GuestTarget, signal: AbortSignal): Promise<GuestLease> {
  const client = await connectGuest(target, signal);
  return { client, kept: false, release: () => client.end() };
}

/** Why `signal` aborted, as an Error. */
const reasonOf = (signal: AbortSignal): Error =>
  signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason));

/**
 * Connects and authenticates to `target` with banger's key, checking the guest's host key against the pinned
 * one. Errors: HOST_KEY_MISMATCH, GUEST_UNREACHABLE, the signal's reason. `keepaliveMs`: a guest that
 * vanished without closing the connection is noticed after three unanswered keepalives.
 */
export async function connectGuest(
  target: GuestTarget,
  signal: AbortSignal,
  options: { keepaliveMs?: number } = {},
): Promise<Client> {
  const client = await newSshClient();
  return new Promise<Client>((resolve, reject) => {
    let hostKeyError: Error | undefined;
    // A connection given up settles only once its host key check (which may pin the key) is over: whoever
    // forgets the key after (a failed create) then finds it.
    let checking: Promise<void> = Promise.resolve();
    const fail = (error: Error) => {
      signal.removeEventListener("abort", onAbort);
      client.destroy();
      void checking.finally(() => reject(error));
    };
    const onAbort = () => fail(reasonOf(signal));
    signal.addEventListener("abort", onAbort, { once: true });
    client.on("error", (error) => fail(hostKeyError ?? guestUnreachable(target, error.message, error)));
    client.once("ready", () => {
      signal.removeEventListener("abort", onAbort);
      client.removeAllListeners("error");
      // Errors from now on are the users' to see (on their channels); one without a user must not throw.
      client.on("error", () => undefined);
      resolve(client);
    });
    client.connect({
      host: target.host,
      port: target.port,
      username: "root",
      privateKey: target.privateKey,
      readyTimeout: CONNECT_TIMEOUT_MS,
      ...(options.keepaliveMs === undefined ? {} : { keepaliveInterval: options.keepaliveMs, keepaliveCountMax: 3 }),
      hostVerifier: (key: Buffer, verify: (valid: boolean) => void) => {
        checking = verifyHostKey(target, key).then(
          () => verify(true),
          (error: unknown) => {
            hostKeyError = error instanceof Error ? error : new Error(String(error));
            verify(false);
          },
        );
      },
    });
    if (signal.aborted) onAbort();
  });
}

/** `promise`, or the signal's reason when it aborts first. */
function unlessAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(reasonOf(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(reasonOf(signal));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** Under which name a connection to `target` is kept: its boot, and everything the connection was made with. */
function keptUnder(target: GuestTarget): string | undefined {
  if (target.reuse === undefined) return undefined;
  const key = createHash("sha256").update(target.privateKey).digest("hex");
  return JSON.stringify([target.reuse.key, target.host, target.port, target.hostKeyAlias, target.knownHostsFile, key]);
}

export function createGuestConnections(options: { idleMs?: number; openMs?: number } = {}): GuestConnections {
  const idleMs = options.idleMs ?? IDLE_MS;
  const openMs = options.openMs ?? OPEN_MS;
  const kept = new Map<string, Kept>();

  /** No new command gets `entry`; it is closed once the commands on it are over (at once when there are none). */
  const forget = (key: string, entry: Kept) => {
    if (kept.get(key) === entry) kept.delete(key);
    clearTimeout(entry.idle);
    if (entry.users > 0) return;
    entry.stop.abort(new Error("the kept connection was closed"));
    entry.client.then(
      (client) => client.end(),
      () => undefined,
    );
  };
  const idleLater = (key: string, entry: Kept) => {
    clearTimeout(entry.idle);
    entry.idle = setTimeout(() => forget(key, entry), idleMs);
    entry.idle.unref();
  };
  /** A new kept connection under `key`. */
  const keep = (key: string, target: GuestTarget): Kept => {
    const stop = new AbortController();
    const entry: Kept = {
      boot: target.reuse?.key ?? "",
      stop,
      client: connectGuest(target, AbortSignal.any([stop.signal, AbortSignal.timeout(CONNECT_TIMEOUT_MS * 2)])),
      users: 0,
      idle: undefined,
    };
    kept.set(key, entry);
    entry.client.then(
      (client) => {
        client.once("close", () => forget(key, entry));
        if (entry.users === 0) idleLater(key, entry);
      },
      () => forget(key, entry),
    );
    return entry;
  };

  const fresh = freshLease;

  return {
    fresh,
    async lease(target, signal) {
      const key = keptUnder(target);
      if (key === undefined) return fresh(target, signal);
      let entry = kept.get(key);
      if (entry && entry.users >= MAX_CHANNELS) return fresh(target, signal);
      const made = entry === undefined;
      entry ??= keep(key, target);
      entry.users++;
      clearTimeout(entry.idle);
      const held = entry;
      let client: Client;
      try {
        client = await unlessAborted(held.client, signal);
      } catch (error) {
        held.users--;
        // A connection this command made failed: its error is the command's. One made earlier (a warm-up)
        // that failed is forgotten: this command makes its own and sees why.
        if (made || signal.aborted) throw error;
        return fresh(target, signal);
      }
      let released = false;
      return {
        client,
        kept: !made,
        ...(made ? {} : { openMs }),
        release(broken) {
          if (released) return;
          released = true;
          held.users--;
          if (broken || kept.get(key) !== held) forget(key, held);
          else if (held.users === 0) idleLater(key, held);
        },
      };
    },
    warm(target) {
      const key = keptUnder(target);
      if (key !== undefined && !kept.has(key)) keep(key, target);
    },
    async connect(target, signal) {
      const key = keptUnder(target);
      if (key === undefined) return;
      await unlessAborted((kept.get(key) ?? keep(key, target)).client, signal);
    },
    async closeGuest(vmId) {
      const going = [...kept].filter(([, entry]) => entry.boot.startsWith(`${vmId}/`));
      for (const [key, entry] of going) forget(key, entry);
      await Promise.allSettled(going.map(([, entry]) => entry.client));
    },
    get size() {
      return kept.size;
    },
    close() {
      for (const [key, entry] of [...kept]) forget(key, entry);
    },
  };
}
