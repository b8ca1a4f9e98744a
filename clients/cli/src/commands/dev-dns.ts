/**
 * `.vm` DNS under `dev up`: as bangerd-dns.socket does for the installed units, port 53 (UDP, then TCP)
 * on the bridge's address is bound as root and passed to the orchestrator, which runs as the owner and
 * may not bind it: fds 3 and 4, LISTEN_FDS=2, LISTEN_FDNAMES=dns:dns, LISTEN_PID the orchestrator's pid
 * (the one mechanism the orchestrator takes passed sockets by, @banger/common's socket-activation).
 *
 * The sockets are bound with IP_FREEBIND (the unit's FreeBind=yes): the bridge, and so its address, is
 * made by the helper only when the first VM starts. Node can neither set IP_FREEBIND nor exec, and
 * LISTEN_PID must name the orchestrator itself: a few lines of python3 bind, drop to the owner and exec
 * the orchestrator in the same process.
 */
import { statSync } from "node:fs";
import { delimiter, join } from "node:path";
import { HostCommandError } from "@banger/common/errors";
import { runProcess } from "@banger/common/host-runner";
import { bridgeAddressOf } from "../bridge-address.js";

/** Binds both sockets (or says why not, and goes on without them), drops to the owner, execs argv[4:]. */
const BIND_AND_EXEC = [
  "import os, socket, sys",
  "address, uid, gid, argv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]",
  "fds = []",
  "try:",
  "    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):",
  "        s = socket.socket(socket.AF_INET, kind)",
  "        s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND",
  "        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)",
  "        s.bind((address, 53))",
  "        if kind == socket.SOCK_STREAM: s.listen(64)",
  "        fds.append(s)",
  "except OSError as e:",
  "    sys.stderr.write('cannot bind port 53 on %s for .vm DNS (%s): <name>.vm will not resolve\\n' % (address, e))",
  "    fds = []",
  "for i, s in enumerate(fds):",
  "    os.dup2(s.fileno(), 3 + i)",
  "    os.set_inheritable(3 + i, True)",
  "if fds:",
  "    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='2', LISTEN_FDNAMES='dns:dns')",
  "os.setgroups([])",
  "os.setgid(gid)",
  "os.setuid(uid)",
  "os.execv(argv[0], argv)",
].join("\n");

/** `argv` (the orchestrator, run as `owner`) behind the binder: what to spawn, as root. */
export function withDnsSockets(
  python: string,
  address: string,
  owner: { readonly uid: number; readonly gid: number },
  argv: readonly string[],
): string[] {
  return [python, "-c", BIND_AND_EXEC, address, String(owner.uid), String(owner.gid), ...argv];
}

/** An executable `name` in $PATH, or undefined. */
export function findOnPath(name: string, path = process.env["PATH"] ?? ""): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, name);
    try {
      const stats = statSync(candidate);
      if (stats.isFile() && (stats.mode & 0o111) !== 0) return candidate;
    } catch {
      // not there
    }
  }
  return undefined;
}

const MAX_CONFIG_BYTES = 1024 * 1024;

/** Run as the owner: prints the file (at most 1 MiB), nothing when there is none, else the errno code and exits 1. */
const READ_AS_OWNER = [
  "const fs = require('node:fs');",
  "try {",
  "  const fd = fs.openSync(process.argv[1], fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);",
  "  if (!fs.fstatSync(fd).isFile() || fs.fstatSync(fd).size > " +
    String(MAX_CONFIG_BYTES) +
    ") throw { code: 'not a regular file of at most 1 MiB' };",
  "  process.stdout.write(fs.readFileSync(fd));",
  "} catch (e) { if (e.code !== 'ENOENT' && e.code !== 'ENOTDIR') { process.stderr.write(String(e.code)); process.exit(1); } process.exit(3); }",
].join("\n");

/**
 * The bridge's address from the owner's config.toml (`configDir`/config.toml), as bangerd will read it.
 * Root opens nothing in the owner's home: the file is read by a child running as the owner (what the owner
 * can read, through whatever symlinks bangerd would follow). One that cannot be read counts as absent
 * (bangerd's default), and `say` tells so.
 */
export async function devBridgeAddress(
  configDir: string,
  owner: { readonly uid: number; readonly gid: number },
  say: (line: string) => void,
): Promise<{ address: string; from: string }> {
  const file = join(configDir, "config.toml");
  let text: string | undefined;
  try {
    const read = await runProcess([process.execPath, "-e", READ_AS_OWNER, file], {
      as: owner,
      cwd: "/",
      env: process.env,
      okCodes: [0, 3],
      maxOutputBytes: 2 * MAX_CONFIG_BYTES,
      signal: AbortSignal.timeout(10_000),
    });
    if (read.code === 0) text = read.stdout.toString("utf8");
  } catch (error) {
    const why = (error instanceof HostCommandError && error.stderrTail) || (error as Error).message;
    say(`cannot read ${file} as uid ${owner.uid} (${why}): .vm DNS binds bangerd's default`);
  }
  return bridgeAddressOf(text, file);
}
