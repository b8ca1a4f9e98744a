import { runProcess } from "./host-runner.js";

/**
 * Copies a file with `cp --reflink=auto --sparse=always`: extents are shared
 * where the file system can (btrfs, XFS), and holes stay holes elsewhere, so a
 * disk image that is mostly free space costs only what its data costs (Node's
 * copyFile writes every zero). `source` may be `/dev/fd/3` with `fd` given:
 * the open file is passed to cp as its fd 3, so the copy reads that file even
 * if it was renamed or unlinked meanwhile. A failure is a HostCommandError
 * quoting cp's stderr.
 */
export async function copySparse(
  source: string,
  target: string,
  options: { fd?: number; signal?: AbortSignal } = {},
): Promise<void> {
  await runProcess(["cp", "--reflink=auto", "--sparse=always", "--", source, target], {
    ...(options.fd === undefined ? {} : { fds: [options.fd] }),
    signal: options.signal,
  });
}
