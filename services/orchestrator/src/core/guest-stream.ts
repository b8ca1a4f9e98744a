/**
 * A guest command whose stdin and stdout are byte streams with backpressure
 * (workspace transfers move whole repositories): the same key, host-key
 * pinning and GUEST_UNREACHABLE error as Exec (guest-exec.ts), but the
 * caller writes to and reads from the SSH channel itself.
 */
import type { ClientChannel } from "ssh2";
import { connectGuest, guestUnreachable, type GuestTarget } from "./guest-connections.js";

/** A guest that vanished without closing the connection is noticed after about 3 × 5 s. */
const KEEPALIVE_MS = 5_000;
const STDERR_TAIL_BYTES = 8 * 1024;

/** How the guest command ended; `code` is -1 when the guest sent no exit status. */
export interface GuestStreamExit {
  readonly code: number;
  readonly signal: string;
  /** The last few KiB of its stderr. */
  readonly stderr: string;
}

export interface GuestStream {
  /**
   * Writable side: the command's stdin (end() closes it). Readable side: its
   * stdout, which must be read to its end (or resume()d): the channel closes,
   * and `done` settles, only then.
   */
  readonly channel: ClientChannel;
  /**
   * Settles once the command ended and its channel closed. Rejects with
   * GUEST_UNREACHABLE when the connection is lost first, or with the
   * signal's reason when `signal` aborts (the session is then torn down).
   */
  readonly done: Promise<GuestStreamExit>;
  /** Tears the session down (the command is hung up). */
  close(): void;
}

/** Runs `commandLine` (a shell line for the guest's login shell) and returns its channel once it started. */
export async function openGuestStream(
  target: GuestTarget,
  commandLine: string,
  signal: AbortSignal,
): Promise<GuestStream> {
  const client = await connectGuest(target, signal, { keepaliveMs: KEEPALIVE_MS });
  return new Promise<GuestStream>((resolveOpen, rejectOpen) => {
    let opened = false;
    let settled = false;
    let exit: { code: number; signal: string } | undefined;
    let stderr = Buffer.alloc(0);
    let resolveDone!: (value: GuestStreamExit) => void;
    let rejectDone!: (error: Error) => void;
    const done = new Promise<GuestStreamExit>((resolve, reject) => {
      resolveDone = resolve;
      rejectDone = reject;
    });
    done.catch(() => undefined); // the caller may stop listening after an earlier failure

    const fail = (reason: unknown) => {
      if (settled) return;
      settled = true;
      signal.removeEventListener("abort", onAbort);
      client.destroy();
      const error = reason instanceof Error ? reason : new Error(String(reason));
      if (opened) rejectDone(error);
      else rejectOpen(error);
    };
    const unreachable = (why: string, cause?: unknown) => guestUnreachable(target, why, cause);
    const onAbort = () => fail(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });

    client.on("error", (error) => fail(unreachable(error.message, error)));
    client.on("close", () => fail(unreachable("the connection closed")));
    client.exec(commandLine, (error: Error | undefined, channel: ClientChannel) => {
      if (error) return fail(unreachable(error.message, error));
      channel.stderr.on("data", (chunk: Buffer) => {
        stderr = Buffer.concat([stderr, chunk]);
        if (stderr.length > STDERR_TAIL_BYTES) stderr = stderr.subarray(stderr.length - STDERR_TAIL_BYTES);
      });
      channel.on("exit", (code: number | null, signalName?: string) => {
        exit = { code: code ?? -1, signal: (signalName ?? "").replace(/^SIG/, "") };
      });
      channel.on("close", () => {
        if (settled) return;
        settled = true;
        signal.removeEventListener("abort", onAbort);
        client.end();
        resolveDone({ code: exit?.code ?? -1, signal: exit?.signal ?? "", stderr: stderr.toString() });
      });
      opened = true;
      resolveOpen({ channel, done, close: () => fail(new Error("closed by the caller")) });
    });
    if (signal.aborted) onAbort();
  });
}
