import { spawn } from "node:child_process";
import { HostCommandError } from "@banger/common";

/** What a host command printed and how it ended. */
export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunOptions {
  /** Written to the command's stdin, then closed. */
  readonly stdin?: string | Buffer;
  readonly signal?: AbortSignal;
  /** Exit codes that are not failures (default: only 0). */
  readonly okCodes?: readonly number[];
  /** Open files handed to the child as fds 3, 4, … (so it gets the file, not a path). */
  readonly fds?: readonly number[];
}

/**
 * The helper's only way to run host tools: an argument vector, never a shell.
 * A non-OK exit becomes a HostCommandError with the argv, code and stderr tail.
 * Tests pass a scripted Runner to drive failure paths and the parts this
 * machine lacks (device-mapper).
 */
export interface Runner {
  run(argv: readonly string[], options?: RunOptions): Promise<RunResult>;
}

export function createProcessRunner(): Runner {
  return {
    run(argv, options = {}) {
      const [command, ...args] = argv;
      if (command === undefined) return Promise.reject(new TypeError("empty argv"));
      return new Promise((resolve, reject) => {
        const fds = options.fds ?? [];
        const child = spawn(command, args, {
          stdio: ["pipe", "pipe", "pipe", ...fds],
          env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
          ...(options.signal ? { signal: options.signal } : {}),
        });
        const out: Buffer[] = [];
        const err: Buffer[] = [];
        child.stdout?.on("data", (c: Buffer) => out.push(c));
        child.stderr?.on("data", (c: Buffer) => err.push(c));
        child.once("error", reject);
        child.once("close", (code, signal) => {
          const result = {
            code: code ?? -1,
            stdout: Buffer.concat(out).toString(),
            stderr: Buffer.concat(err).toString(),
          };
          const ok = options.okCodes ?? [0];
          if (signal === null && ok.includes(result.code)) resolve(result);
          else reject(new HostCommandError(argv, signal === null ? result.code : null, result.stderr));
        });
        child.stdin?.on("error", () => {}); // a tool that exits without reading stdin
        child.stdin?.end(options.stdin ?? "");
      });
    },
  };
}
