/**
 * Running host tools (e2fsprogs, losetup, ip, nft, …) from an argument
 * vector, never a shell: the privileged helper and the orchestrator's work
 * disk both go through this. Tests pass a scripted Runner instead, to drive
 * failure paths and what the machine lacks.
 */
import { spawn } from "node:child_process";
import { CancelledError, FailedPreconditionError, HostCommandError, ResourceExhaustedError } from "./errors.js";

/** What a host command printed and how it ended. */
export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunOptions {
  /** Written to the command's stdin, then closed. */
  readonly stdin?: string | Buffer;
  readonly signal?: AbortSignal | undefined;
  /** Exit codes that are not failures (default: only 0). */
  readonly okCodes?: readonly number[];
  /** Open files handed to the child as fds 3, 4, … (so it gets the file, not a path). */
  readonly fds?: readonly number[];
  /** Run as this user and group (the caller needs CAP_SETUID and CAP_SETGID). */
  readonly as?: { readonly uid: number; readonly gid: number };
  /** Most bytes kept of stdout and of stderr each (default {@link MAX_OUTPUT_BYTES}); beyond it the tool is killed. */
  readonly maxOutputBytes?: number;
}

/**
 * What a tool may print before it is killed: a tool run as the owner (e2fsck
 * on a guest's disk) is the owner's to ptrace, and could otherwise print
 * without end into the helper's memory. Real output is kilobytes.
 */
export const MAX_OUTPUT_BYTES = 16 * 1024 * 1024;

/**
 * A non-OK exit is a HostCommandError (HOST_COMMAND_FAILED) with the argv,
 * exit code and stderr tail; a tool that is not installed is
 * FAILED_PRECONDITION HOST_TOOL_MISSING; an aborted run is a CancelledError.
 */
export interface Runner {
  run(argv: readonly string[], options?: RunOptions): Promise<RunResult>;
}

/** Where the real runner finds host tools: sbin too (a user's PATH may lack it). */
export const HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin";

/** The real runner: {@link HOST_PATH} and the C locale (output is parsed). */
export function createHostRunner(): Runner {
  return {
    run(argv, options = {}) {
      const [command, ...args] = argv;
      if (command === undefined) return Promise.reject(new TypeError("empty argv"));
      const { signal } = options;
      const cancelled = () => new CancelledError(`${command} was cancelled`, { cause: signal?.reason });
      if (signal?.aborted) return Promise.reject(cancelled());
      return new Promise((resolve, reject) => {
        const child = spawn(command, args, {
          stdio: ["pipe", "pipe", "pipe", ...(options.fds ?? [])],
          env: { PATH: HOST_PATH, LC_ALL: "C" },
          ...(signal ? { signal } : {}),
          ...(options.as ? { uid: options.as.uid, gid: options.as.gid } : {}),
        });
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
        child.once("error", (error: NodeJS.ErrnoException) => {
          if (signal?.aborted) reject(cancelled());
          else if (error.code === "ENOENT") {
            reject(
              new FailedPreconditionError(`${command} is not installed on this host`, {
                reason: "HOST_TOOL_MISSING",
                cause: error,
              }),
            );
          } else reject(error);
        });
        child.once("close", (code, killedBy) => {
          if (signal?.aborted) return reject(cancelled());
          if (tooMuch) {
            return reject(
              new ResourceExhaustedError(`${command} printed more than ${max} bytes; it was stopped`, {
                reason: "HOST_OUTPUT_TOO_LARGE",
              }),
            );
          }
          const result = {
            code: code ?? -1,
            stdout: Buffer.concat(out).toString(),
            stderr: Buffer.concat(err).toString(),
          };
          if (killedBy === null && (options.okCodes ?? [0]).includes(result.code)) resolve(result);
          else reject(new HostCommandError(argv, killedBy === null ? result.code : null, result.stderr));
        });
        child.stdin?.on("error", () => {}); // a tool that exits without reading stdin
        child.stdin?.end(options.stdin ?? "");
      });
    },
  };
}
