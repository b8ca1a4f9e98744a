/**
 * The one place banger's services and CLI start host programs (e2fsprogs,
 * losetup, ip, nft, git, zstd, ssh, …), from an argument vector, never a
 * shell. ESLint keeps `node:child_process` out of every other module (see
 * eslint.config.js). Three shapes of run share one set of options and one
 * error model:
 * - {@link runProcess}: run to the end, stdin given, stdout collected as bytes
 *   (capped), the {@link Runner} port the helper and the orchestrator inject
 *   is its string form ({@link createHostRunner});
 * - {@link streamProcess}: stdout read as the consumer pulls it (zstd, git);
 * - {@link runAttached}: the program gets this process's terminal (`vm ssh`).
 * Tests pass a scripted Runner instead, to drive failure paths and what the
 * machine lacks.
 */
import { spawn, type ChildProcess } from "node:child_process";
import type { Readable } from "node:stream";
import { CancelledError, FailedPreconditionError, HostCommandError, ResourceExhaustedError } from "./errors.js";

/** What a host command printed and how it ended. */
export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** {@link RunResult} with stdout as bytes (names in debugfs listings, decompressed data). */
export interface ProcessResult {
  readonly code: number;
  readonly stdout: Buffer;
  readonly stderr: string;
}

/** What every run may say: how it is cancelled, whom it runs as, where, with what environment. */
export interface ProcessOptions {
  /** Aborting kills the program; the run then ends with a CancelledError. */
  readonly signal?: AbortSignal | undefined;
  /** Run as this user and group (the caller needs CAP_SETUID and CAP_SETGID). */
  readonly as?: { readonly uid: number; readonly gid: number };
  readonly cwd?: string;
  /** The program's whole environment (default: {@link HOST_PATH} and the C locale, nothing of this process's). */
  readonly env?: NodeJS.ProcessEnv;
}

export interface RunOptions extends ProcessOptions {
  /** Written to the command's stdin, then closed. */
  readonly stdin?: string | Uint8Array;
  /** Exit codes that are not failures (default: only 0). */
  readonly okCodes?: readonly number[];
  /** Open files handed to the child as fds 3, 4, … (so it gets the file, not a path). */
  readonly fds?: readonly number[];
  /** Most bytes kept of stdout and of stderr each (default {@link MAX_OUTPUT_BYTES}); beyond it the tool is killed. */
  readonly maxOutputBytes?: number;
  /** A failure's HostCommandError quotes stdout's tail too (e2fsck reports its findings there). */
  readonly stdoutInError?: boolean;
}

/**
 * What a tool may print before it is killed: a tool run as the owner (e2fsck
 * on a guest's disk) is the owner's to ptrace, and could otherwise print
 * without end into the helper's memory. Real output is kilobytes.
 */
export const MAX_OUTPUT_BYTES = 16 * 1024 * 1024;

/** Every exit code a process can have: as okCodes, the caller reads the code itself. */
export const ANY_EXIT_CODE: readonly number[] = Array.from({ length: 256 }, (_, i) => i);

/**
 * A non-OK exit is a HostCommandError (HOST_COMMAND_FAILED) with the argv,
 * exit code and stderr tail; a tool that is not installed is
 * FAILED_PRECONDITION HOST_TOOL_MISSING; an aborted run is a CancelledError;
 * output beyond the cap is RESOURCE_EXHAUSTED HOST_OUTPUT_TOO_LARGE.
 */
export interface Runner {
  run(argv: readonly string[], options?: RunOptions): Promise<RunResult>;
}

/** Where the real runner finds host tools: sbin too (a user's PATH may lack it). */
export const HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin";

/** The real runner: {@link runProcess} with stdout as text. */
export function createHostRunner(): Runner {
  return {
    async run(argv, options) {
      const result = await runProcess(argv, options);
      return { ...result, stdout: result.stdout.toString() };
    },
  };
}

/** Spawns `argv` with the shared options; `stdio` says which of stdin, stdout, stderr are pipes. */
function start(
  argv: readonly string[],
  options: ProcessOptions,
  stdio: "inherit" | ("pipe" | "ignore" | number)[],
): { command: string; child: ChildProcess } {
  const [command, ...args] = argv;
  if (command === undefined) throw new TypeError("empty argv");
  const { signal, as } = options;
  const child = spawn(command, args, {
    stdio,
    env: options.env ?? { PATH: HOST_PATH, LC_ALL: "C" },
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    ...(signal ? { signal } : {}),
    ...(as ? { uid: as.uid, gid: as.gid } : {}),
  });
  return { command, child };
}

/** What a spawn `error` event means: cancelled, not installed, or itself. */
function startFailure(command: string, error: NodeJS.ErrnoException, signal: AbortSignal | undefined): Error {
  if (signal?.aborted) return cancelled(command, signal);
  if (error.code === "ENOENT") {
    return new FailedPreconditionError(`${command} is not installed on this host`, {
      reason: "HOST_TOOL_MISSING",
      cause: error,
    });
  }
  return error;
}

const cancelled = (command: string, signal: AbortSignal | undefined) =>
  new CancelledError(`${command} was cancelled`, { cause: signal?.reason });

/** Runs `argv` to its end with `stdin`; resolves with its output once it exited with an OK code. */
export function runProcess(argv: readonly string[], options: RunOptions = {}): Promise<ProcessResult> {
  const { signal } = options;
  if (argv[0] !== undefined && signal?.aborted) return Promise.reject(cancelled(argv[0], signal));
  return new Promise((resolve, reject) => {
    const { command, child } = start(argv, options, ["pipe", "pipe", "pipe", ...(options.fds ?? [])]);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const max = options.maxOutputBytes ?? MAX_OUTPUT_BYTES;
    let tooMuch = false;
    const collect = (into: Buffer[]) => {
      let bytes = 0;
      return (chunk: Buffer) => {
        if (tooMuch) return;
        bytes += chunk.length;
        if (bytes > max) {
          tooMuch = true;
          child.kill("SIGKILL");
          return;
        }
        into.push(chunk);
      };
    };
    child.stdout?.on("data", collect(out));
    child.stderr?.on("data", collect(err));
    child.once("error", (error: NodeJS.ErrnoException) => reject(startFailure(command, error, signal)));
    child.once("close", (code, killedBy) => {
      if (signal?.aborted) return reject(cancelled(command, signal));
      if (tooMuch) {
        return reject(
          new ResourceExhaustedError(`${command} printed more than ${max} bytes; it was stopped`, {
            reason: "HOST_OUTPUT_TOO_LARGE",
          }),
        );
      }
      const result = { code: code ?? -1, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString() };
      if (killedBy === null && (options.okCodes ?? [0]).includes(result.code)) return resolve(result);
      const said = options.stdoutInError ? `${result.stderr}\n${result.stdout.toString()}` : result.stderr;
      reject(new HostCommandError(argv, killedBy === null ? result.code : null, said));
    });
    child.stdin?.on("error", () => {}); // a tool that exits without reading stdin
    child.stdin?.end(options.stdin ?? "");
  });
}

export interface StreamedRun {
  /** The program's standard output, read as the consumer pulls it (a full pipe stops the program). */
  readonly stdout: Readable;
  /** Its standard error as it comes (its tail is also kept for the failure). */
  readonly stderr: Readable;
  /**
   * Settles when the program exits: a non-zero exit or a kill is a HostCommandError with the
   * tail of its stderr, a cancelled run a CancelledError, a missing program HOST_TOOL_MISSING.
   */
  readonly exited: Promise<void>;
  /** Whether it has not exited yet. */
  running(): boolean;
  /** Kills the program (SIGKILL unless told; when its output is no longer wanted); harmless after it exited. */
  stop(signal?: NodeJS.Signals): void;
}

/** Starts `argv` with stdin closed and its output streamed, with the backpressure of a pipe: it waits while nobody reads. */
export function streamProcess(argv: readonly string[], options: ProcessOptions = {}): StreamedRun {
  const { command, child } = start(argv, options, ["ignore", "pipe", "pipe"]);
  const { stdout, stderr } = child;
  if (stdout === null || stderr === null) throw new Error("spawn gave no output pipes");
  let tail = "";
  stderr.on("data", (c: Buffer) => (tail = (tail + c.toString()).slice(-4096)));
  const exited = new Promise<void>((resolve, reject) => {
    child.once("error", (error: NodeJS.ErrnoException) => reject(startFailure(command, error, options.signal)));
    child.once("close", (code, killedBy) => {
      if (options.signal?.aborted) reject(cancelled(command, options.signal));
      else if (code === 0) resolve();
      else reject(new HostCommandError(argv, killedBy === null ? code : null, tail));
    });
  });
  exited.catch(() => undefined); // the caller awaits it when it wants the verdict
  const running = () => child.exitCode === null && child.signalCode === null;
  return {
    stdout,
    stderr,
    exited,
    running,
    stop: (signal = "SIGKILL") => {
      if (running()) child.kill(signal);
    },
  };
}

/**
 * Runs `argv` on this process's terminal (stdin, stdout and stderr inherited)
 * and resolves with its exit code (128 when a signal ended it).
 */
export function runAttached(argv: readonly string[], options: ProcessOptions = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const { command, child } = start(argv, options, "inherit");
    child.once("error", (error: NodeJS.ErrnoException) => reject(startFailure(command, error, options.signal)));
    child.once("exit", (code, killedBy) => resolve(code ?? (killedBy ? 128 : 1)));
  });
}
