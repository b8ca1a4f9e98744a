/**
 * The host side of a prepare: the directory it is given (inside the owner's
 * home), the repository's files as tar entries, and in GIT mode its `.git`.
 */
import { lstat, readdir, readlink, realpath } from "node:fs/promises";
import { isAbsolute, join, relative, sep } from "node:path";
import { FailedPreconditionError, InvalidArgumentError, PermissionDeniedError } from "@banger/common";
import type { Repository } from "../workspace-git.js";
import type { TreeEntry } from "../workspace-tar.js";

/** The host path as a directory inside the owner's home, symlinks resolved. */
export async function hostDirectory(home: string, path: string): Promise<string> {
  const invalid = (why: string) =>
    new InvalidArgumentError(`host path ${JSON.stringify(path)} ${why}`, { reason: "INVALID_PATH" });
  if (!isAbsolute(path)) throw invalid("is not absolute");
  const real = await realpath(path).catch(() => {
    throw invalid("does not exist");
  });
  if (!(await lstat(real)).isDirectory()) throw invalid("is not a directory");
  await insideHome(home, real, real);
  return real;
}

export async function insideHome(ownerHome: string, path: string, what: string): Promise<void> {
  const home = await realpath(ownerHome).catch(() => ownerHome);
  if (!isInside(path, home)) {
    throw new PermissionDeniedError(`${what} is outside the owner's home (${home}); workspaces copy only from there`, {
      reason: "PATH_OUTSIDE_HOME",
    });
  }
}

/** GIT mode copies `.git` as a directory; a linked worktree's or an alternates user's would be incomplete. */
export async function gitDirToCopy(repo: Repository): Promise<string> {
  const unsupported = (why: string) =>
    new FailedPreconditionError(`${repo.top}: ${why}; use mode COPY (--mode copy)`, {
      reason: "UNSUPPORTED_GIT_LAYOUT",
    });
  const dotGit = join(repo.top, ".git");
  if (repo.gitDir !== dotGit || !(await lstat(dotGit)).isDirectory()) {
    throw unsupported("its git directory is not a .git directory inside it (a linked worktree or a separate git dir)");
  }
  if (await lstat(join(dotGit, "objects", "info", "alternates")).catch(() => undefined)) {
    throw unsupported("it borrows objects from another repository (objects/info/alternates)");
  }
  return dotGit;
}

/** `paths` of the repository as tar entries, with every directory they need; deleted files are left out. */
export async function scanFiles(top: string, paths: readonly string[], signal: AbortSignal): Promise<TreeEntry[]> {
  const entries: TreeEntry[] = [];
  const dirs = new Set<string>();
  for (const path of paths) {
    signal.throwIfAborted();
    const source = join(top, path);
    const stats = await lstat(source).catch(() => undefined);
    if (!stats || !(stats.isFile() || stats.isSymbolicLink())) continue;
    const parts = path.split("/");
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/"));
    entries.push({
      path,
      kind: stats.isFile() ? "file" : "symlink",
      source,
      linkTarget: stats.isSymbolicLink() ? await readlink(source) : "",
      mode: stats.mode & 0o777,
      size: stats.isFile() ? stats.size : 0,
      mtimeMs: stats.mtimeMs,
    });
  }
  for (const dir of dirs) {
    const stats = await lstat(join(top, dir));
    entries.push(directoryEntry(dir, join(top, dir), stats.mode, stats.mtimeMs));
  }
  return entries;
}

/** Everything under `dir` (a git directory) as entries under `prefix`, lock files and sockets left out. */
export async function walkGitDir(dir: string, prefix: string): Promise<TreeEntry[]> {
  const stats = await lstat(dir);
  const entries: TreeEntry[] = [directoryEntry(prefix, dir, stats.mode, stats.mtimeMs)];
  for (const child of await readdir(dir, { withFileTypes: true })) {
    const source = join(dir, child.name);
    const path = `${prefix}/${child.name}`;
    if (child.isDirectory()) entries.push(...(await walkGitDir(source, path)));
    else if (child.isFile() || child.isSymbolicLink()) {
      if (child.name.endsWith(".lock")) continue; // a git command running now; the guest must not inherit its lock
      const s = await lstat(source);
      entries.push({
        path,
        kind: child.isFile() ? "file" : "symlink",
        source,
        linkTarget: child.isSymbolicLink() ? await readlink(source) : "",
        mode: s.mode & 0o777,
        size: child.isFile() ? s.size : 0,
        mtimeMs: s.mtimeMs,
      });
    }
  }
  return entries;
}

/** Whether `path` is `dir` or inside it (both absolute, symlinks resolved). */
function isInside(path: string, dir: string): boolean {
  const rel = relative(dir, path);
  return rel === "" || (!rel.startsWith(`..${sep}`) && rel !== ".." && !isAbsolute(rel));
}

function directoryEntry(path: string, source: string, mode: number, mtimeMs: number): TreeEntry {
  return { path, kind: "directory", source, linkTarget: "", mode: mode & 0o777, size: 0, mtimeMs };
}
