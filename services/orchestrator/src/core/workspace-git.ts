/**
 * The host side of workspaces in git terms: finding the repository a path
 * is in, listing what a prepare copies (tracked files plus untracked files
 * that are not ignored; submodules and embedded repositories refused), the
 * baseline each prepare records (a git directory of its own holding one
 * commit of exactly the files copied), and the patch of a guest's tree
 * against that baseline.
 *
 * git runs as the owner with their global configuration (so their global
 * excludes apply), but never with their GIT_* environment, and with the
 * options a patch depends on pinned on the command line.
 */
import { lstat, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  FailedPreconditionError,
  HostCommandError,
  InvalidArgumentError,
  runProcess,
  streamProcess,
} from "@banger/common";
import { CommonReason } from "@banger/common/reasons";

export interface GitOptions {
  readonly cwd?: string;
  readonly env?: Readonly<Record<string, string>>;
  readonly input?: string | Buffer;
  /** Exit codes that are not failures (default: only 0). */
  readonly okCodes?: readonly number[];
  readonly signal: AbortSignal;
}

/** The environment git runs with: the service's own minus any GIT_* variable, plus `extra`. */
function gitEnv(extra: Readonly<Record<string, string>> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith("GIT_")) env[key] = value;
  return { ...env, LC_ALL: "C", GIT_TERMINAL_PROMPT: "0", GIT_OPTIONAL_LOCKS: "0", ...extra };
}

/**
 * What one git run may print: a listing of the files a prepare copies or a
 * baseline's object, from the owner's own repository; larger output (a
 * patch) is streamed ({@link streamGit}).
 */
const GIT_OUTPUT_BYTES = 1024 ** 3;

const gitMissing = (cause: unknown) =>
  new FailedPreconditionError("git is not installed on the host; workspaces need it", {
    reason: "HOST_TOOL_MISSING",
    cause,
  });

/** What a run's failure means to a workspace: the caller's abort reason, git missing, or itself. */
function gitFailure(error: unknown, signal: AbortSignal): unknown {
  if (signal.aborted) return signal.reason;
  if (error instanceof FailedPreconditionError && error.reason === CommonReason.HOST_TOOL_MISSING)
    return gitMissing(error);
  return error;
}

/** Runs git and returns its stdout; a non-OK exit is a HostCommandError with the stderr tail. */
export async function runGit(args: readonly string[], options: GitOptions): Promise<{ code: number; stdout: Buffer }> {
  const { signal } = options;
  if (signal.aborted) throw signal.reason as Error;
  try {
    const { code, stdout } = await runProcess(["git", ...args], {
      ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
      env: gitEnv(options.env),
      stdin: options.input ?? "",
      ...(options.okCodes ? { okCodes: options.okCodes } : {}),
      maxOutputBytes: GIT_OUTPUT_BYTES,
      signal,
    });
    return { code, stdout };
  } catch (error) {
    throw gitFailure(error, signal);
  }
}

async function git(args: readonly string[], options: GitOptions): Promise<string> {
  return (await runGit(args, options)).stdout.toString();
}

/** git's stdout as it comes; throws a HostCommandError at the end when git failed. */
export async function* streamGit(args: readonly string[], options: GitOptions): AsyncGenerator<Buffer> {
  const { signal } = options;
  signal.throwIfAborted();
  const run = streamProcess(["git", ...args], {
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    env: gitEnv(options.env),
    signal,
  });
  try {
    for await (const chunk of run.stdout) yield chunk as Buffer;
    await run.exited;
  } catch (error) {
    throw gitFailure(error, signal);
  } finally {
    run.stop("SIGTERM");
  }
}

/** A repository on the host, as a prepare sees it. */
export interface Repository {
  /** Its top level (absolute, symlinks resolved). */
  readonly top: string;
  /** Its git directory (absolute). */
  readonly gitDir: string;
  /** The branch checked out, or "" when HEAD is detached. */
  readonly branch: string;
  /** HEAD's commit, or "" before the first commit. */
  readonly head: string;
}

/** The repository `path` is in. Errors: NOT_A_GIT_REPOSITORY (also for a path inside `.git` or a bare repository). */
export async function findRepository(path: string, signal: AbortSignal): Promise<Repository> {
  let lines: string[];
  try {
    lines = (await git(["rev-parse", "--show-toplevel", "--absolute-git-dir"], { cwd: path, signal })).split("\n");
  } catch (error) {
    if (!(error instanceof HostCommandError)) throw error;
    const why =
      error.stderrTail
        .split("\n")
        .at(-1)
        ?.replace(/^fatal: /, "") ?? "";
    throw new InvalidArgumentError(`${path} is not in a git repository with a working tree${why ? ` (${why})` : ""}`, {
      reason: "NOT_A_GIT_REPOSITORY",
      cause: error,
    });
  }
  const [top = "", gitDir = ""] = lines;
  const branch = (await runGit(["symbolic-ref", "--short", "-q", "HEAD"], { cwd: top, signal, okCodes: [0, 1] })).stdout
    .toString()
    .trim();
  const head = (
    await runGit(["rev-parse", "-q", "--verify", "HEAD^{commit}"], { cwd: top, signal, okCodes: [0, 1] })
  ).stdout
    .toString()
    .trim();
  return { top, gitDir, branch, head };
}

const submodules = (what: string) =>
  new FailedPreconditionError(
    `${what}: workspaces do not copy submodules or nested repositories; prepare each repository on its own`,
    { reason: "SUBMODULES_UNSUPPORTED" },
  );

/** Lists `"a", "b"…` (at most five, then how many more). */
function some(paths: readonly string[]): string {
  const shown = paths.slice(0, 5).map((p) => JSON.stringify(p));
  return paths.length > 5 ? `${shown.join(", ")} and ${paths.length - 5} more` : shown.join(", ");
}

/**
 * What a prepare copies: tracked files (as they are in the working tree) and
 * untracked files that are not ignored, relative to `top`, sorted, once
 * each. Refuses a repository with submodules (`.gitmodules`, gitlinks in the
 * index) or with an untracked repository inside it.
 */
export async function listRepositoryFiles(top: string, signal: AbortSignal): Promise<string[]> {
  if (await lstat(join(top, ".gitmodules")).catch(() => undefined)) {
    throw submodules(`${top} has submodules (.gitmodules)`);
  }
  const staged = splitZ(await git(["ls-files", "-z", "--stage"], { cwd: top, signal }));
  const tracked = new Set<string>();
  const gitlinks: string[] = [];
  for (const line of staged) {
    // "<mode> <object> <stage>\t<path>"
    const tab = line.indexOf("\t");
    const path = line.slice(tab + 1);
    if (line.startsWith("160000 ")) gitlinks.push(path);
    else tracked.add(path);
  }
  if (gitlinks.length > 0) throw submodules(`${top} has submodules (${some(gitlinks)})`);
  const others = splitZ(await git(["ls-files", "-z", "--others", "--exclude-standard"], { cwd: top, signal }));
  // An untracked directory that is a repository of its own is listed as "dir/", never entered.
  const nested = others.filter((path) => path.endsWith("/"));
  if (nested.length > 0) throw submodules(`${top} holds other git repositories (${some(nested)})`);
  return [...new Set([...tracked, ...others])].sort();
}

function splitZ(output: string): string[] {
  return output.split("\0").filter((part) => part !== "");
}

/** Identity of the commits banger records. */
const BASELINE_IDENTITY = {
  GIT_AUTHOR_NAME: "banger",
  GIT_AUTHOR_EMAIL: "banger@localhost",
  GIT_COMMITTER_NAME: "banger",
  GIT_COMMITTER_EMAIL: "banger@localhost",
};

/**
 * Files are recorded byte for byte: no end-of-line conversion, no clean or
 * smudge filter (LFS and the like), whatever the repository's attributes say.
 */
const RAW_ATTRIBUTES = "* -text -filter -ident -working-tree-encoding\n";

/**
 * Makes `gitDir` a repository of its own (not bare: it can be a guest's
 * `.git`) whose branch `branch` holds one commit of `paths` read from `top`,
 * with the index matching it. The source repository's `info/exclude` is
 * copied so its ignore rules stay in force. Returns the commit.
 */
export async function recordBaseline(args: {
  readonly gitDir: string;
  readonly top: string;
  readonly sourceGitDir: string;
  readonly paths: readonly string[];
  readonly branch: string;
  readonly message: string;
  readonly signal: AbortSignal;
}): Promise<string> {
  const { gitDir, signal } = args;
  const at = ["--git-dir", gitDir];
  await git([...at, "init", "-q", "--template="], { signal });
  await git([...at, "config", "core.bare", "false"], { signal });
  await mkdir(join(gitDir, "info"), { recursive: true });
  const exclude = await readFile(join(args.sourceGitDir, "info", "exclude")).catch(() => Buffer.alloc(0));
  await writeFile(join(gitDir, "info", "exclude"), exclude);
  await writeFile(join(gitDir, "info", "attributes"), RAW_ATTRIBUTES);
  const env = { GIT_INDEX_FILE: join(gitDir, "index"), ...BASELINE_IDENTITY };
  await git([...at, "--work-tree", args.top, "update-index", "--add", "-z", "--stdin"], {
    cwd: args.top,
    env,
    input: args.paths.map((path) => `${path}\0`).join(""),
    signal,
  });
  const tree = (await git([...at, "write-tree"], { env, signal })).trim();
  const commit = (await git([...at, "commit-tree", "--no-gpg-sign", "-m", args.message, tree], { env, signal })).trim();
  const ref = `refs/heads/${args.branch}`;
  await git([...at, "update-ref", ref, commit], { signal });
  await git([...at, "symbolic-ref", "HEAD", ref], { signal });
  // One pack instead of a loose object per file: fewer files to send and to keep.
  await git([...at, "repack", "-a", "-d", "-q", "--window=0"], { signal });
  return commit;
}

/**
 * The patch (`git apply`-able, binary changes included) from `commit` in
 * `gitDir` to the files in `workTree`, leaving `gitDir` untouched (the index
 * and new objects go to `scratch`). Ignored files of the tree are left out,
 * as `git add -A` leaves them.
 */
export async function* diffAgainst(args: {
  readonly gitDir: string;
  readonly commit: string;
  readonly workTree: string;
  readonly scratch: string;
  readonly signal: AbortSignal;
}): AsyncGenerator<Buffer> {
  const { signal } = args;
  const objects = join(args.scratch, "objects");
  await mkdir(objects, { recursive: true });
  const options = {
    cwd: args.workTree,
    env: {
      GIT_DIR: args.gitDir,
      GIT_WORK_TREE: args.workTree,
      GIT_INDEX_FILE: join(args.scratch, "index"),
      GIT_OBJECT_DIRECTORY: objects,
      GIT_ALTERNATE_OBJECT_DIRECTORIES: join(args.gitDir, "objects"),
    },
    signal,
  };
  await git(["read-tree", args.commit], options);
  await git(["-c", "core.autocrlf=false", "add", "-A"], options);
  yield* streamGit(
    [
      "-c",
      "diff.noprefix=false",
      "-c",
      "diff.mnemonicPrefix=false",
      "diff",
      "--cached",
      "--binary",
      "--full-index",
      "--no-color",
      "--no-ext-diff",
      "--no-textconv",
      "--no-relative",
      "--src-prefix=a/",
      "--dst-prefix=b/",
      args.commit,
    ],
    options,
  );
}
