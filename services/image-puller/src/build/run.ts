import { spawn } from "node:child_process";
import type { Readable } from "node:stream";
import { HostCommandError } from "@banger/common";

export interface RunOptions {
  readonly stdin?: string;
  readonly signal: AbortSignal;
  readonly okCodes?: readonly number[];
}

/** Runs a host tool with an argument vector (never a shell); a non-zero exit is a HostCommandError. */
export async function run(argv: readonly string[], options: RunOptions): Promise<string> {
  return (await runForBytes(argv, options)).toString();
}

/** run(), its standard output as bytes (names in debugfs listings need not be UTF-8). */
export function runForBytes(argv: readonly string[], options: RunOptions): Promise<Buffer> {
  const [command, ...args] = argv;
  if (command === undefined) return Promise.reject(new TypeError("empty argv"));
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      signal: options.signal,
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => out.push(c));
    child.stderr.on("data", (c: Buffer) => err.push(c));
    child.once("error", reject);
    child.once("close", (code) => {
      const stdout = Buffer.concat(out);
      const stderr = Buffer.concat(err).toString();
      if ((options.okCodes ?? [0]).includes(code ?? -1)) resolve(stdout);
      // Some tools (e2fsck) report their findings on stdout: keep both tails.
      else reject(new HostCommandError(argv, code, `${stderr}\n${stdout.toString()}`));
    });
    child.stdin.on("error", () => {});
    child.stdin.end(options.stdin ?? "");
  });
}

export interface StreamedRun {
  /** The tool's standard output, read as the consumer pulls it (a full pipe stops the tool). */
  readonly stdout: Readable;
  /** Settles when the tool exits: a non-zero exit is a HostCommandError with the tail of its stderr. */
  readonly exited: Promise<void>;
  /** Kills the tool (when its output is no longer wanted); harmless after it exited. */
  stop(): void;
}

/** Runs a host tool whose output is streamed, with the backpressure of a pipe: the tool waits while nobody reads. */
export function runStreamed(argv: readonly string[], options: { signal: AbortSignal }): StreamedRun {
  const [command, ...args] = argv;
  if (command === undefined) throw new TypeError("empty argv");
  const child = spawn(command, args, {
    signal: options.signal,
    stdio: ["ignore", "pipe", "pipe"],
    env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
  });
  let stderr = "";
  child.stderr.on("data", (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4096)));
  const exited = new Promise<void>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => {
      if (code === 0) resolve();
      else reject(new HostCommandError(argv, code, stderr));
    });
  });
  exited.catch(() => undefined); // the caller awaits it when it wants the verdict
  return {
    stdout: child.stdout,
    exited,
    stop: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    },
  };
}
