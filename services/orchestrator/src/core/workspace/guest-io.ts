/**
 * The guest side of a workspace transfer: the shell scripts the guest runs
 * (busybox's sh and tar are enough), the tar stream sent into a command's
 * stdin, and a command's failure as a typed error.
 */
import {
  FailedPreconditionError,
  InternalError,
  ResourceExhaustedError,
  UnavailableError,
  type BangerError,
} from "@banger/common";
import { shellQuote } from "../guest-exec.js";
import type { GuestStream, GuestStreamExit } from "../guest-stream.js";

/** Two 512-byte zero blocks: a tar with nothing in it. */
export const EMPTY_TAR = Buffer.alloc(1024);

/**
 * Unpacks the tar on stdin into $1, a new directory beside the target; a
 * failure or a hang-up mid-way removes it. The target is not touched.
 */
export const UNPACK_SCRIPT = `set -e
new=$1
if ! command -v tar >/dev/null 2>&1; then echo "tar: not found" >&2; exit 127; fi
rm -rf -- "$new"
trap 'rm -rf -- "$new"' EXIT
trap 'exit 129' HUP INT TERM PIPE
mkdir -p -- "$new"
tar -xf - -C "$new"
trap - EXIT
`;

/**
 * Puts the unpacked tree $2 in the place of the target $1 (whatever was
 * there goes, by way of $3): run only once the host has the whole transfer
 * confirmed, so a prepare that fails or is cancelled leaves the target as it was.
 */
export const SWAP_SCRIPT = `set -e
dest=$1 new=$2 old=$3
if [ ! -d "$new" ]; then echo "the unpacked workspace $new is gone" >&2; exit 4; fi
rm -rf -- "$old"
if [ -e "$dest" ] || [ -L "$dest" ]; then mv -- "$dest" "$old"; fi
mv -- "$new" "$dest"
rm -rf -- "$old"
`;

/** A tar of $1's contents without its top-level .git on stdout (busybox tar has no --exclude); nothing when empty. */
export const EXPORT_SCRIPT = `cd "$1" 2>/dev/null || { echo "no directory $1" >&2; exit 3; }
if ! command -v tar >/dev/null 2>&1; then echo "tar: not found" >&2; exit 127; fi
set --
for f in .[!.]* ..?* *; do
  if [ -e "$f" ] || [ -L "$f" ]; then
    if [ "$f" != .git ]; then set -- "$@" "./$f"; fi
  fi
done
if [ $# -eq 0 ]; then exit 0; fi
exec tar -cf - "$@"
`;

/** The guest command line running `script` with `args` as $1…, whatever the login shell is. */
export function scriptLine(script: string, args: readonly string[]): string {
  return ["sh", "-c", script, "banger-workspace", ...args].map(shellQuote).join(" ");
}

/** Writes to the SSH channel at least this much at a time: each write is a packet, and small ones crawl. */
const WRITE_BATCH_BYTES = 64 * 1024;

/** `chunks` regrouped into buffers of at least `size` bytes (the last one may be smaller). */
async function* batched(chunks: AsyncIterable<Buffer>, size: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of chunks) {
    parts.push(chunk);
    bytes += chunk.length;
    if (bytes >= size) {
      yield Buffer.concat(parts);
      parts = [];
      bytes = 0;
    }
  }
  if (bytes > 0) yield Buffer.concat(parts);
}

/**
 * Streams `chunks` into the guest command's stdin at the pace SSH takes them,
 * closes it, and returns how the command ended (early if it exits before
 * reading everything).
 */
export async function send(session: GuestStream, chunks: AsyncIterable<Buffer>): Promise<GuestStreamExit> {
  let ended = false;
  const over = session.done.then(
    () => (ended = true),
    () => (ended = true),
  );
  for await (const chunk of batched(chunks, WRITE_BATCH_BYTES)) {
    if (ended) break;
    if (!session.channel.write(chunk)) {
      await Promise.race([new Promise((resolve) => session.channel.once("drain", resolve)), over]);
    }
  }
  if (!ended) session.channel.end();
  return session.done;
}

/** A guest command that did not end with 0, as a typed error. */
export function guestFailure(exit: GuestStreamExit, doing: string): BangerError {
  const tail = exit.stderr.trim().split("\n").slice(-3).join("; ");
  if (exit.code === -1) {
    return new UnavailableError(`the guest hung up while ${doing}${tail ? `: ${tail}` : ""}`, {
      reason: "GUEST_UNREACHABLE",
    });
  }
  if (exit.code === 127) {
    return new FailedPreconditionError(
      `the guest lacks a tool workspaces need (sh, tar, mkdir, mv and rm; busybox's are enough): ${tail}`,
      { reason: "GUEST_TOOL_MISSING" },
    );
  }
  if (/no space left/i.test(exit.stderr)) {
    return new ResourceExhaustedError(`the guest's disk is full (${doing}): ${tail}`, { reason: "GUEST_DISK_FULL" });
  }
  return new InternalError(`${doing} in the guest failed (exit ${exit.code}): ${tail}`, {
    reason: "GUEST_COMMAND_FAILED",
  });
}

export function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}
