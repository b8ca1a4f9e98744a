/**
 * Decompressing what distribution kernels compress: the payload of a bzImage
 * (vmlinux.ts) and `.ko.xz`/`.ko.zst`/`.ko.gz` modules (initramfs.ts). gzip
 * is Node's own; the other formats go through the host's tools, run from an
 * argument vector (never a shell) with the data on stdin and the result read
 * from stdout.
 */
import { promisify } from "node:util";
import { gunzip } from "node:zlib";
import { FailedPreconditionError, runProcess } from "@banger/common";
import { CommonReason } from "@banger/common/reasons";

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
    if (error instanceof FailedPreconditionError && error.reason === CommonReason.HOST_TOOL_MISSING) {
      throw new FailedPreconditionError(
        `${tool.argv[0]} is not installed: it is needed to decompress ${format} data (Debian package ${tool.pkg})`,
        { reason: "HOST_TOOL_MISSING", cause: error },
      );
    }
    throw error;
  }
}

/**
 * What decompressed data may take: a distribution's vmlinux is tens of MiB,
 * a module a few; a bomb of a few KB stops here.
 */
const MAX_DECOMPRESSED_BYTES = 1024 ** 3;

/** The real ToolRunner: C locale, a fixed PATH, stdout collected, the stderr tail kept on failure. */
export const runTool: ToolRunner = async (argv, input, signal) => {
  const env = { PATH: "/usr/local/bin:/usr/bin:/bin", LC_ALL: "C" };
  return (await runProcess(argv, { stdin: input, signal, env, maxOutputBytes: MAX_DECOMPRESSED_BYTES })).stdout;
};
