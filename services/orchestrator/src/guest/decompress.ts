/**
 * Decompressing what distribution kernels compress: the payload of a bzImage
 * (vmlinux.ts) and `.ko.xz`/`.ko.zst`/`.ko.gz` modules (initramfs.ts). gzip
 * is Node's own; the other formats go through the host's tools, run from an
 * argument vector (never a shell) with the data on stdin and the result read
 * from stdout.
 */
import { spawn } from "node:child_process";
import { promisify } from "node:util";
import { gunzip } from "node:zlib";
import { CancelledError, FailedPreconditionError, HostCommandError } from "@banger/common";

export type Compression = "gzip" | "xz" | "lzma" | "zstd" | "bzip2" | "lz4";

/** Runs `argv` with `input` on stdin; resolves with its stdout. A missing tool is HOST_TOOL_MISSING. */
export type ToolRunner = (argv: readonly string[], input: Uint8Array, signal?: AbortSignal) => Promise<Buffer>;

/** The command that decompresses each format from stdin to stdout, and the Debian package that has it. */
const TOOLS: Record<Exclude<Compression, "gzip">, { argv: readonly string[]; pkg: string }> = {
  // --single-stream: a bzImage payload may carry bytes after the stream.
  xz: { argv: ["xz", "-dc", "--single-stream"], pkg: "xz-utils" },
  lzma: { argv: ["xz", "-dc", "--format=lzma"], pkg: "xz-utils" },
  zstd: { argv: ["zstd", "-dcq"], pkg: "zstd" },
  bzip2: { argv: ["bzip2", "-dc"], pkg: "bzip2" },
  lz4: { argv: ["lz4", "-dc"], pkg: "lz4" },
};

/** The compression a buffer starts with (by its magic number), if banger knows it. */
export function compressionOf(bytes: Uint8Array): Compression | undefined {
  const starts = (...magic: number[]) => magic.every((byte, i) => bytes[i] === byte);
  if (starts(0x1f, 0x8b)) return "gzip";
  if (starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00)) return "xz";
  if (starts(0x28, 0xb5, 0x2f, 0xfd)) return "zstd";
  if (starts(0x42, 0x5a, 0x68)) return "bzip2";
  if (starts(0x02, 0x21, 0x4c, 0x18) || starts(0x04, 0x22, 0x4d, 0x18)) return "lz4";
  if (starts(0x5d, 0x00, 0x00)) return "lzma";
  return undefined;
}

/** Decompresses `bytes` (in `format`); gzip in process, the rest with the host's tool. */
export async function decompress(
  format: Compression,
  bytes: Uint8Array,
  options: { signal?: AbortSignal | undefined; run?: ToolRunner | undefined } = {},
): Promise<Buffer> {
  if (format === "gzip") return promisify(gunzip)(bytes);
  const tool = TOOLS[format];
  try {
    return await (options.run ?? runTool)(tool.argv, bytes, options.signal);
  } catch (error) {
    if (error instanceof FailedPreconditionError && error.reason === "HOST_TOOL_MISSING") {
      throw new FailedPreconditionError(
        `${tool.argv[0]} is not installed: it is needed to decompress ${format} data (Debian package ${tool.pkg})`,
        { reason: "HOST_TOOL_MISSING", cause: error },
      );
    }
    throw error;
  }
}

/** The real ToolRunner: C locale, a fixed PATH, stdout collected, the stderr tail kept on failure. */
export const runTool: ToolRunner = (argv, input, signal) => {
  const [command, ...args] = argv;
  if (command === undefined) return Promise.reject(new TypeError("empty argv"));
  if (signal?.aborted) return Promise.reject(new CancelledError(`${command} was cancelled`, { cause: signal.reason }));
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ["pipe", "pipe", "pipe"],
      env: { PATH: "/usr/local/bin:/usr/bin:/bin", LC_ALL: "C" },
      ...(signal ? { signal } : {}),
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (chunk: Buffer) => out.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => err.push(chunk));
    child.once("error", (error: NodeJS.ErrnoException) => {
      if (signal?.aborted) reject(new CancelledError(`${command} was cancelled`, { cause: signal.reason }));
      else if (error.code === "ENOENT") {
        reject(
          new FailedPreconditionError(`${command} is not installed`, { reason: "HOST_TOOL_MISSING", cause: error }),
        );
      } else reject(error);
    });
    child.once("close", (code, killedBy) => {
      if (signal?.aborted) return reject(new CancelledError(`${command} was cancelled`, { cause: signal.reason }));
      if (code === 0) resolve(Buffer.concat(out));
      else reject(new HostCommandError(argv, killedBy === null ? code : null, Buffer.concat(err).toString()));
    });
    child.stdin.on("error", () => {}); // a tool that fails before reading all of stdin
    child.stdin.end(input);
  });
};
