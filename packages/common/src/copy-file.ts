import { spawn } from "node:child_process";

/**
 * Copies a file with `cp --reflink=auto --sparse=always`: extents are shared
 * where the file system can (btrfs, XFS), and holes stay holes elsewhere, so a
 * disk image that is mostly free space costs only what its data costs (Node's
 * copyFile writes every zero). `source` may be `/dev/fd/3` with `fd` given:
 * the open file is passed to cp as its fd 3, so the copy reads that file even
 * if it was renamed or unlinked meanwhile.
 */
export function copySparse(source: string, target: string, options: { fd?: number; signal?: AbortSignal } = {}) {
  return new Promise<void>((resolve, reject) => {
    const child = spawn("cp", ["--reflink=auto", "--sparse=always", "--", source, target], {
      stdio: options.fd === undefined ? ["ignore", "ignore", "pipe"] : ["ignore", "ignore", "pipe", options.fd],
      ...(options.signal ? { signal: options.signal } : {}),
    });
    let stderr = "";
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code, signal) =>
      code === 0
        ? resolve()
        : reject(new Error(`cp ${source} ${target} failed: ${stderr.trim() || (signal ?? `exit ${code}`)}`)),
    );
  });
}
