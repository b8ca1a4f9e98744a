/**
 * Where a kernel is imported from: a directory on the host, read through its
 * `metadata.json` (paths that must stay inside it) or else the layout a
 * distribution kernel package unpacks to; and the host's own installed kernel.
 */
import { readFile, readdir, realpath, stat } from "node:fs/promises";
import { release as osRelease } from "node:os";
import { basename, isAbsolute, join, relative, resolve, sep } from "node:path";
import { InvalidArgumentError, NotFoundError, PermissionDeniedError } from "@banger/common";

/** A kernel release as `uname -r` prints it (at most 64 characters). */
const VERSION = /^[A-Za-z0-9._+~-]{1,64}$/;

/** The host's installed kernel: its compressed image and its modules tree. */
export interface HostKernel {
  readonly version: string;
  /** `<root>/boot/vmlinuz-<version>`. */
  readonly kernel: string;
  /** `<root>/lib/modules/<version>`, with its modules.dep. */
  readonly modules: string;
}

/**
 * `<root>/boot/vmlinuz-<release>` when its modules are installed (the kernel
 * this host runs), else the newest `<root>/boot/vmlinuz-*` whose modules are;
 * undefined when there is none.
 */
export async function findHostKernel(root = "/", release = osRelease()): Promise<HostKernel | undefined> {
  const boot = join(root, "boot");
  const hasModules = async (version: string) =>
    stat(join(root, "lib", "modules", version, "modules.dep")).then(
      (info) => info.isFile(),
      () => false,
    );
  const versions = versioned(await entries(boot, "file"), /^vmlinuz-(.+)$/).map((v) => v.version);
  const candidates = [
    ...(versions.includes(release) ? [release] : []),
    ...[...versions].sort((a, b) => compareVersions(b, a)),
  ];
  for (const version of candidates) {
    if (await hasModules(version)) {
      return { version, kernel: join(boot, `vmlinuz-${version}`), modules: join(root, "lib", "modules", version) };
    }
  }
  return undefined;
}

/** What to copy, as absolute host paths. */
export interface ImportPlan {
  readonly kernel: string;
  readonly initrd: string | null;
  readonly modules: string | null;
  /** "" if unknown. */
  readonly version: string;
}

export async function validSourceDir(path: string): Promise<string> {
  if (!isAbsolute(path)) {
    throw new InvalidArgumentError(`source directory must be an absolute path, got ${JSON.stringify(path)}`, {
      reason: "INVALID_PATH",
    });
  }
  const dir = resolve(path);
  let info;
  try {
    info = await stat(dir);
  } catch (error) {
    const code = errnoOf(error);
    if (code === "ENOENT" || code === "ENOTDIR") {
      throw new NotFoundError(`${dir} does not exist`, { reason: "PATH_NOT_FOUND", cause: error });
    }
    if (code === "EACCES") throw unreadable(dir, error);
    throw error;
  }
  if (!info.isDirectory()) throw new InvalidArgumentError(`${dir} is not a directory`, { reason: "INVALID_PATH" });
  return dir;
}

/** metadata.json when the directory has one, else the distribution layout. */
export async function planImport(sourceDir: string): Promise<ImportPlan> {
  let metadata: string | undefined;
  try {
    metadata = await readFile(join(sourceDir, "metadata.json"), "utf8");
  } catch (error) {
    if (errnoOf(error) !== "ENOENT") throw error;
  }
  const plan = metadata === undefined ? await planFromLayout(sourceDir) : await planFromMetadata(sourceDir, metadata);
  if ((await stat(plan.kernel)).size === 0) {
    throw new InvalidArgumentError(`kernel file ${plan.kernel} is empty`, { reason: "NO_KERNEL_FOUND" });
  }
  return plan;
}

function invalidMetadata(message: string, cause?: unknown): InvalidArgumentError {
  return new InvalidArgumentError(`metadata.json: ${message}`, {
    reason: "INVALID_METADATA",
    ...(cause === undefined ? {} : { cause }),
  });
}

async function planFromMetadata(sourceDir: string, text: string): Promise<ImportPlan> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw invalidMetadata(`not valid JSON (${(error as Error).message})`, error);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw invalidMetadata("must hold a JSON object");
  }
  const fields = parsed as Record<string, unknown>;
  const field = (key: string): string => {
    const value = fields[key];
    if (value === undefined || value === null) return "";
    if (typeof value !== "string") throw invalidMetadata(`"${key}" must be a string`);
    return value;
  };
  const kernel = field("kernel");
  if (kernel === "") throw invalidMetadata('"kernel" (the kernel file, relative to the directory) is required');
  const initrd = field("initrd");
  const modules = field("modules");
  const version = field("version") || versionFromFileName(basename(kernel));
  if (version !== "" && !VERSION.test(version)) {
    throw invalidMetadata(`"version" must match ${VERSION.source}, got ${JSON.stringify(version)}`);
  }
  return {
    kernel: await insideSource(sourceDir, "kernel", kernel, "file"),
    initrd: initrd === "" ? null : await insideSource(sourceDir, "initrd", initrd, "file"),
    modules: modules === "" ? null : await insideSource(sourceDir, "modules", modules, "directory"),
    version,
  };
}

/** The real path of `path` (relative to `root`), refused unless it stays inside `root`, symbolic links included. */
async function insideSource(root: string, key: string, path: string, kind: "file" | "directory"): Promise<string> {
  const named = `"${key}" (${JSON.stringify(path)})`;
  if (isAbsolute(path)) throw invalidMetadata(`${named} must be relative to the directory`);
  if (!isInside(root, resolve(root, path))) throw invalidMetadata(`${named} leads out of the directory`);
  let real: string;
  try {
    real = await realpath(resolve(root, path));
  } catch (error) {
    if (errnoOf(error) === "ENOENT") throw invalidMetadata(`${named} does not exist`, error);
    throw error;
  }
  if (!isInside(await realpath(root), real)) {
    throw invalidMetadata(`${named} leads out of the directory through a symbolic link`);
  }
  const info = await stat(real);
  if (kind === "file" ? !info.isFile() : !info.isDirectory()) throw invalidMetadata(`${named} is not a ${kind}`);
  return real;
}

/** Whether `path` is strictly inside `root` (both absolute and normalized). */
function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== "" && rel !== ".." && !rel.startsWith(`..${sep}`) && !isAbsolute(rel);
}

/**
 * `boot/vmlinux-*` (else `boot/vmlinuz-*`; the highest version when there
 * are several), the initrd of the same version (or the only one), and
 * `lib/modules/<version>` (else the highest one starting with the version,
 * else the highest one).
 */
async function planFromLayout(sourceDir: string): Promise<ImportPlan> {
  const boot = join(sourceDir, "boot");
  const bootFiles = await entries(boot, "file");
  const kernels = (prefix: string) => versioned(bootFiles, new RegExp(`^${prefix}-(.+)$`));
  const candidates = kernels("vmlinux").length > 0 ? kernels("vmlinux") : kernels("vmlinuz");
  const kernel = highest(candidates);
  if (kernel === undefined) {
    throw new InvalidArgumentError(
      `no kernel in ${sourceDir}: it has no metadata.json and no boot/vmlinux-* or boot/vmlinuz-*`,
      { reason: "NO_KERNEL_FOUND" },
    );
  }
  const version = kernel.version;
  const initrds = versioned(bootFiles, /^(?:initramfs|initrd\.img)-(.+?)(?:\.img)?$/);
  const initrd = initrds.find((i) => i.version === version) ?? (initrds.length === 1 ? initrds[0] : undefined);

  let modules: string | null = null;
  for (const base of [join(sourceDir, "lib", "modules"), join(sourceDir, "usr", "lib", "modules")]) {
    const trees = (await entries(base, "directory")).map((entry) => ({ entry, version: entry }));
    const tree =
      trees.find((t) => t.version === version) ??
      highest(trees.filter((t) => t.version.startsWith(version))) ??
      highest(trees);
    if (tree) {
      modules = join(base, tree.entry);
      break;
    }
  }
  return {
    kernel: join(boot, kernel.entry),
    initrd: initrd ? join(boot, initrd.entry) : null,
    modules,
    version: VERSION.test(version) ? version : "",
  };
}

interface Versioned {
  readonly entry: string;
  readonly version: string;
}

function versioned(names: readonly string[], pattern: RegExp): Versioned[] {
  return names.flatMap((entry) => {
    const version = pattern.exec(entry)?.[1];
    return version === undefined ? [] : [{ entry, version }];
  });
}

function highest<T extends Versioned>(items: readonly T[]): T | undefined {
  return [...items].sort((a, b) => compareVersions(b.version, a.version))[0];
}

/** "vmlinuz-6.1.0-27-amd64" → "6.1.0-27-amd64"; "" when the name has no version. */
function versionFromFileName(file: string): string {
  return /^vmlinu[xz]-(.+)$/.exec(file)?.[1] ?? "";
}

/** Orders kernel releases: runs of digits compare as numbers ("6.10" > "6.9"), the rest as text. */
export function compareVersions(a: string, b: string): number {
  const pa = a.match(/\d+|\D+/g) ?? [];
  const pb = b.match(/\d+|\D+/g) ?? [];
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i];
    const y = pb[i];
    if (x === undefined || y === undefined) return x === undefined ? -1 : 1;
    if (x === y) continue;
    if (/^\d/.test(x) && /^\d/.test(y)) {
      const [nx, ny] = [x.replace(/^0+(?=\d)/, ""), y.replace(/^0+(?=\d)/, "")];
      if (nx.length !== ny.length) return nx.length - ny.length;
      if (nx !== ny) return nx < ny ? -1 : 1;
    } else {
      return x < y ? -1 : 1;
    }
  }
  return 0;
}

/**
 * A directory bangerd may not read. Under its unit (systemd sets INVOCATION_ID) that is usually
 * the sandbox: it sees the owner's home read-only and never /lib/modules.
 */
function unreadable(dir: string, cause: unknown): PermissionDeniedError {
  const why =
    process.env["INVOCATION_ID"] === undefined
      ? ""
      : ": bangerd's unit shows it only your home (read-only) and hides /lib/modules; copy the kernel package " +
        "(boot/vmlinuz-VERSION, lib/modules/VERSION) into your home and import that copy";
  return new PermissionDeniedError(`bangerd cannot read ${dir}${why}`, { reason: "SOURCE_UNREADABLE", cause });
}

/** Names of the regular files (or directories) in `dir`, symbolic links followed; none if it is missing. */
async function entries(dir: string, kind: "file" | "directory"): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    const code = errnoOf(error);
    if (code === "ENOENT" || code === "ENOTDIR") return [];
    if (code === "EACCES" || code === "EPERM") throw unreadable(dir, error);
    throw error;
  }
  const kept = await Promise.all(
    names.map(async (name) => {
      const info = await stat(join(dir, name)).catch(() => undefined);
      return (kind === "file" ? info?.isFile() : info?.isDirectory()) ? name : undefined;
    }),
  );
  return kept.filter((name) => name !== undefined).sort();
}

export function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}
