/**
 * The log relays: the VMM's stdout (the guest console) and stderr (its own log) are pipes, each
 * read by a relay that keeps the newest output in `console.log` / `vmm.log` plus one predecessor
 * (`.1`), the two within the VM's log cap. Its argv, and how the helper recognises one.
 */
import { isVmId } from "../../validate/ids.js";
import { CONSOLE_LOG, VMM_LOG } from "./runtime-paths.js";

/** The static busybox (Debian's busybox-static; banger's initramfs needs it too) the log relays run on. */
export const RELAY_BUSYBOX = "/bin/busybox";
const RELAY_NAME = "banger-log-relay";
/**
 * A log relay: `$2` in its working directory (the VM's) gets at most `$3` bytes of stdin, then
 * becomes `$2.1` and a new `$2` begins; it ends when stdin does (the VMM is gone). busybox dd with
 * count_bytes reads exactly what it writes (no output lost at a rotation) and writes each read at
 * once (a prompt without a newline shows). Whatever is at `$2` when it starts (an earlier run's
 * output, or anything the owner put there) becomes the predecessor, never written through. A
 * failed write (the tmpfs full) drops that block and retries a second later with a new file.
 */
const RELAY_SCRIPT = [
  `umask 022; b=${RELAY_BUSYBOX} f=$2 half=$3`,
  `if [ -e "$f" ] || [ -L "$f" ]; then $b mv -f "$f" "$f.1"; fi`,
  `while :; do`,
  `  $b dd bs=65536 count="$half" iflag=count_bytes of="$f" 2>/dev/null`,
  `  rc=$?`,
  `  size=$($b stat -c %s "$f" 2>/dev/null || echo 0)`,
  `  [ "$rc" = 0 ] && [ "$size" -lt "$half" ] && exit 0`,
  `  [ "$rc" = 0 ] || $b sleep 1`,
  `  $b mv -f "$f" "$f.1"`,
  `done`,
].join("\n");

/** The argv of the relay that writes `file` of VM `vmId`, keeping `maxBytes` in all. */
export function relayArgv(vmId: string, file: string, maxBytes: number): string[] {
  return [RELAY_BUSYBOX, "sh", "-c", RELAY_SCRIPT, RELAY_NAME, vmId, file, String(Math.floor(maxBytes / 2))];
}

/** Which VM a command line is the log relay of, if it is exactly one. */
export function relayOf(cmdline: readonly string[]): string | undefined {
  const [bin, sh, c, script, name, vmId, file, half] = cmdline;
  if (bin !== RELAY_BUSYBOX || sh !== "sh" || c !== "-c" || script !== RELAY_SCRIPT || name !== RELAY_NAME) {
    return undefined;
  }
  if (cmdline.length !== 8 || (file !== CONSOLE_LOG && file !== VMM_LOG) || !/^\d+$/.test(half ?? "")) return undefined;
  return vmId !== undefined && isVmId(vmId) ? vmId : undefined;
}
