import { spawn } from "node:child_process";
import { HostCommandError } from "@banger/common";

/** Runs a host tool with an argument vector (never a shell); a non-zero exit is a HostCommandError. */
export function run(
  argv: readonly string[],
  options: { stdin?: string; signal: AbortSignal; okCodes?: readonly number[] },
): Promise<string> {
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
      const stdout = Buffer.concat(out).toString();
      const stderr = Buffer.concat(err).toString();
      if ((options.okCodes ?? [0]).includes(code ?? -1)) resolve(stdout);
      // Some tools (e2fsck) report their findings on stdout: keep both tails.
      else reject(new HostCommandError(argv, code, `${stderr}\n${stdout}`));
    });
    child.stdin.on("error", () => {});
    child.stdin.end(options.stdin ?? "");
  });
}
