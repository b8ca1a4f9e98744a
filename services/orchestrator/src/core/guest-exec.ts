/**
 * Running a command in a guest over SSH (ssh2): banger's key, the guest's
 * host key pinned in banger's known_hosts under `<name>.vm` on first contact
 * and refused when it changes. The argument vector is quoted for the guest's
 * shell, so what the caller sends is exactly what runs.
 */
import { DeadlineExceededError, InvalidArgumentError } from "@banger/common";
import type { ClientChannel } from "ssh2";
import { freshLease, guestUnreachable, type GuestLease, type GuestTarget } from "./guest-connections.js";

export { verifyHostKey, type GuestTarget } from "./guest-connections.js";

export interface GuestCommand {
  readonly argv: readonly string[];
  readonly env: readonly string[];
  readonly workingDir: string;
  readonly user: string;
  readonly stdin: Uint8Array;
  readonly timeoutMs: number | undefined;
}

/** What an interactive caller sends after the command. */
export type GuestInput =
  | { readonly kind: "stdin"; readonly data: Uint8Array }
  | { readonly kind: "close" }
  | { readonly kind: "resize"; readonly columns: number; readonly rows: number };

/** Interactive use: input streamed as it comes, and optionally a pseudo-terminal. */
export interface Interactive {
  readonly input: AsyncIterable<GuestInput>;
  readonly tty?: { readonly columns: number; readonly rows: number; readonly term: string };
}

export interface ExitStatus {
  readonly code: number;
  readonly signal: string;
  readonly timedOut: boolean;
}

const ENV_ENTRY = /^[A-Za-z_][A-Za-z0-9_]*=/;

/** `'…'` quoting for a POSIX shell. */
export function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** The remote command line: environment, directory and user applied, argv quoted word by word. */
export function remoteCommand(command: GuestCommand): string {
  if (command.argv.length === 0 || command.argv[0] === "") {
    throw new InvalidArgumentError("the command needs at least one word", { reason: "EMPTY_ARGV" });
  }
  for (const entry of command.env) {
    if (!ENV_ENTRY.test(entry)) {
      throw new InvalidArgumentError(`environment entries are KEY=value, got ${JSON.stringify(entry)}`, {
        reason: "INVALID_ENV",
      });
    }
  }
  const argv = command.argv.map(shellQuote).join(" ");
  const env = command.env.length > 0 ? `env ${command.env.map(shellQuote).join(" ")} ` : "";
  // The guest kills it at the timeout (coreutils' and busybox's `timeout` both take this form).
  const limit =
    command.timeoutMs === undefined ? "" : `timeout -s KILL ${Math.max(1, Math.ceil(command.timeoutMs / 1000))} `;
  const line = `cd ${shellQuote(command.workingDir || "/root")} && exec ${limit}${env}${argv}`;
  if (command.user === "" || command.user === "root" || command.user === "0") return line;
  return `exec su -s /bin/sh ${shellQuote(command.user)} -c ${shellQuote(line)}`;
}

/**
 * Runs `command` in the guest; output goes to `onStdout`/`onStderr` as it
 * comes. A non-zero exit is a result, not an error. Cancelling `signal`
 * closes the connection (the command is hung up). On a kept connection
 * (guest-connections.ts) when the target names one; a command whose
 * channel a kept connection could not open (it has not run) is tried once
 * more on a new connection.
 */
export async function execInGuest(
  target: GuestTarget,
  command: GuestCommand,
  output: { onStdout: (chunk: Buffer) => void; onStderr: (chunk: Buffer) => void },
  signal: AbortSignal,
  interactive?: Interactive,
): Promise<ExitStatus> {
  const line = remoteCommand(command);
  const connections = target.reuse?.connections;
  try {
    const lease = connections ? await connections.lease(target, signal) : await freshLease(target, signal);
    try {
      return await runOn(lease, target, line, command, output, signal, interactive);
    } catch (error) {
      if (!(error instanceof NotStarted)) throw error;
      if (!lease.kept || !connections || signal.aborted) throw error.cause;
      const again = await connections.fresh(target, signal);
      return await runOn(again, target, line, command, output, signal, interactive).catch((retried: unknown) => {
        throw retried instanceof NotStarted ? retried.cause : retried;
      });
    }
  } catch (error) {
    if (error instanceof Error && error.name === "TimeoutError") {
      throw new DeadlineExceededError("the command ran past its deadline", { cause: error });
    }
    throw error;
  }
}

/** A failure before the command's channel was open: the guest has not run the command. */
class NotStarted extends Error {
  constructor(override readonly cause: Error) {
    super(cause.message);
  }
}

/** `line` on the leased connection; the lease is released (broken unless the command ended normally). */
function runOn(
  lease: GuestLease,
  target: GuestTarget,
  line: string,
  command: GuestCommand,
  output: { onStdout: (chunk: Buffer) => void; onStderr: (chunk: Buffer) => void },
  signal: AbortSignal,
  interactive: Interactive | undefined,
): Promise<ExitStatus> {
  const { client } = lease;
  return new Promise<ExitStatus>((resolve, reject) => {
    let settled = false;
    let started = false;
    let timer: NodeJS.Timeout | undefined;
    let open: ClientChannel | undefined;
    const finish = (error: unknown, status?: ExitStatus) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      client.off("error", onLost);
      client.off("close", onClosed);
      if (error !== undefined || status?.timedOut === true) open?.close();
      // Only a command that ended as commands do leaves its connection to the next one.
      lease.release(error !== undefined || status?.timedOut === true);
      if (error) {
        const failure = error instanceof Error ? error : new Error("the SSH session failed", { cause: error });
        reject(started || signal.aborted ? failure : new NotStarted(failure));
      } else if (status) resolve(status);
    };
    const unreachable = (why: string, cause?: Error) => guestUnreachable(target, why, cause);
    const onAbort = () => finish(signal.reason);
    const onLost = (error: Error) => finish(unreachable(error.message, error));
    const onClosed = () => finish(unreachable("the connection closed"));
    signal.addEventListener("abort", onAbort, { once: true });
    client.on("error", onLost);
    client.on("close", onClosed);
    const tty = interactive?.tty;
    const options = tty ? { pty: { cols: tty.columns, rows: tty.rows, term: tty.term, height: 0, width: 0 } } : {};
    if (lease.openMs !== undefined) {
      const ms = lease.openMs;
      timer = setTimeout(() => finish(unreachable(`a kept connection opened no channel within ${ms} ms`)), ms);
    }
    client.exec(line, options, (error: Error | undefined, channel: ClientChannel) => {
      clearTimeout(timer);
      if (error) return finish(unreachable(error.message, error));
      if (settled) return channel.close();
      started = true;
      open = channel;
      let timedOut = false;
      if (command.timeoutMs !== undefined) {
        // The guest's `timeout` kills the command; should the guest not answer, give up a little later.
        timer = setTimeout(() => {
          timedOut = true;
          finish(undefined, { code: -1, signal: "KILL", timedOut: true });
        }, command.timeoutMs + 5_000);
      }
      channel.on("data", (chunk: Buffer) => output.onStdout(chunk));
      channel.stderr.on("data", (chunk: Buffer) => output.onStderr(chunk));
      let exit: ExitStatus | undefined;
      channel.on("exit", (code: number | null, signalName?: string) => {
        const signalled = (signalName ?? "").replace(/^SIG/, "");
        // The guest's `timeout -s KILL` ends with 137, or is killed along with the command.
        if (command.timeoutMs !== undefined && (code === 137 || signalled === "KILL")) {
          exit = { code: -1, signal: "KILL", timedOut: true };
        } else {
          exit = { code: signalled ? -1 : (code ?? -1), signal: signalled, timedOut };
        }
      });
      channel.on("close", () => finish(undefined, exit ?? { code: -1, signal: timedOut ? "KILL" : "", timedOut }));
      if (!interactive) {
        channel.end(Buffer.from(command.stdin));
        return;
      }
      // Input as it comes; the stream ending closes stdin too.
      void (async () => {
        try {
          for await (const event of interactive.input) {
            if (event.kind === "stdin") channel.write(Buffer.from(event.data));
            else if (event.kind === "resize") channel.setWindow(event.rows, event.columns, 0, 0);
            else break;
          }
          channel.end();
        } catch (inputError) {
          finish(inputError);
        }
      })();
    });
    if (signal.aborted) onAbort();
  });
}

export interface ListeningPort {
  readonly protocol: "tcp" | "tcp6" | "udp" | "udp6";
  readonly address: string;
  readonly port: number;
  readonly process: string;
}

/** The guest command whose output `parseListeningPorts` reads (every Linux has these files). */
export const LISTENING_PORTS_ARGV = [
  "sh",
  "-c",
  'for f in tcp tcp6 udp udp6; do echo "# $f"; cat /proc/net/$f 2>/dev/null; done',
];

/** "0100007F" → "127.0.0.1"; the 32-hex IPv6 form → its compressed text. */
function procAddress(hex: string): string {
  if (hex.length === 8) {
    return [6, 4, 2, 0].map((i) => parseInt(hex.slice(i, i + 2), 16)).join(".");
  }
  // IPv6: four 32-bit words, each in host (little-endian) order.
  const groups: string[] = [];
  for (let word = 0; word < 4; word++) {
    const w = hex.slice(word * 8, word * 8 + 8);
    const bytes = [6, 4, 2, 0].map((i) => w.slice(i, i + 2)).join("");
    groups.push(bytes.slice(0, 4), bytes.slice(4, 8));
  }
  const text = groups.map((g) => parseInt(g, 16).toString(16)).join(":");
  return text === "0:0:0:0:0:0:0:0" ? "::" : text.replace(/(^|:)0(:0)+(:|$)/, "::");
}

/** Listening TCP sockets (state 0A) and bound UDP sockets (state 07) from /proc/net/*, sorted by port then protocol. */
export function parseListeningPorts(output: string): ListeningPort[] {
  const ports = new Map<string, ListeningPort>();
  let protocol: ListeningPort["protocol"] | undefined;
  for (const line of output.split("\n")) {
    const header = /^# (tcp6?|udp6?)$/.exec(line.trim());
    if (header) {
      protocol = header[1] as ListeningPort["protocol"];
      continue;
    }
    const fields = line.trim().split(/\s+/);
    const [local, state] = [fields[1], fields[3]];
    if (!protocol || !local || !state || !/^[0-9A-F]+:[0-9A-F]{4}$/.test(local)) continue;
    const listening = protocol.startsWith("tcp") ? state === "0A" : state === "07";
    if (!listening) continue;
    const [addressHex = "", portHex = ""] = local.split(":");
    const port = parseInt(portHex, 16);
    const entry = { protocol, address: procAddress(addressHex), port, process: "" };
    ports.set(`${protocol} ${entry.address} ${port}`, entry);
  }
  return [...ports.values()].sort((a, b) => a.port - b.port || a.protocol.localeCompare(b.protocol));
}
