/**
 * Where `banger dev up` puts its sockets and state when not told, and so where the CLI looks for it
 * with no variable set.
 *
 * As root (with an owner): `/run/banger-dev/<owner uid>` and `/var/lib/banger-dev/<owner uid>`. Their
 * parents are root's (0755, never writable by anyone else, refused otherwise) and only root can make a
 * name in them, so the owner can neither plant nor rename the directory root then works in; the
 * directory itself is the owner's (0700), where root follows no name twice (dev-files.ts). One per
 * owner: two owners' dev ups never share a directory, and a uid finds its own without asking.
 *
 * Not as root: everything runs as the caller, in the caller's own directories, never in a shared one
 * such as /tmp (where another user could make the name first): `$XDG_RUNTIME_DIR/banger-dev` for the
 * sockets (the per-user 0700 tmpfs the login manager makes) and `${XDG_STATE_HOME:-~/.local/state}/banger-dev`
 * for the state; without $XDG_RUNTIME_DIR the sockets go in `<state>/run`.
 */
import { lstatSync } from "node:fs";
import { homedir } from "node:os";
import { isAbsolute, join } from "node:path";

/** Root-owned parents of the per-owner directories of a `dev up` run as root. */
export const DEV_RUNTIME_PARENT = "/run/banger-dev";
export const DEV_STATE_PARENT = "/var/lib/banger-dev";

export interface DevDirs {
  readonly runtimeDir: string;
  readonly stateDir: string;
}

/** The default directories of a `dev up` whose services run as `uid` (`asRoot`: dev up itself runs as root). */
export function defaultDevDirs(uid: number, asRoot: boolean, env: NodeJS.ProcessEnv = process.env): DevDirs {
  if (asRoot)
    return { runtimeDir: join(DEV_RUNTIME_PARENT, String(uid)), stateDir: join(DEV_STATE_PARENT, String(uid)) };
  const absolute = (value: string | undefined) => (value && isAbsolute(value) ? value : undefined);
  const stateDir = join(
    absolute(env["XDG_STATE_HOME"]) ?? join(absolute(env["HOME"]) ?? homedir(), ".local", "state"),
    "banger-dev",
  );
  const xdgRuntime = absolute(env["XDG_RUNTIME_DIR"]);
  return { runtimeDir: xdgRuntime ? join(xdgRuntime, "banger-dev") : join(stateDir, "run"), stateDir };
}

/**
 * The runtime directories of a `dev up` the calling user may be running, in the order the CLI tries
 * them: the one root makes for this uid, then the one the user's own `dev up` makes. Only a directory
 * that is this uid's counts (a stranger's is never used).
 */
export function devRuntimeDirsOf(uid: number, env: NodeJS.ProcessEnv = process.env): string[] {
  const candidates = [defaultDevDirs(uid, true, env).runtimeDir, defaultDevDirs(uid, false, env).runtimeDir];
  return candidates.filter((dir) => {
    try {
      const stats = lstatSync(dir);
      return stats.isDirectory() && stats.uid === uid;
    } catch {
      return false;
    }
  });
}
