/**
 * banger's initramfs for a kernel whose drivers are modules (a distribution
 * kernel): a gzip'd newc cpio archive holding
 *
 * - `/init`: banger's init (init/init.sh): loads the modules, configures the
 *   network from `ip=`, mounts the root disk and the work disk on its /root,
 *   makes SSH host keys, and switches to the image's init or banger's
 *   minimal init (init/minimal-init.sh, at `/banger/minimal-init`);
 * - `/bin/busybox` (static, from the host: `/bin/busybox` of Debian's
 *   busybox-static by default) and `/bin/sh` linking to it;
 * - `/lib/modules/banger/<module>.ko`, uncompressed, with their load order in
 *   `/lib/modules/banger/order`: the modules of `INITRAMFS_MODULES` that the
 *   kernel does not have built in, and what they need (modules.dep, plus the
 *   `pre:` soft dependencies of modules.softdep through modules.alias);
 * - `/banger/kit/`: banger's guest kit (kit.ts): dropbear, dropbearkey and
 *   qemu-ga with their libraries and loader, and the kit's scripts `start`
 *   (init/kit-start.sh) and `poweroff` (init/kit-poweroff.sh); /init copies it
 *   to the guest's /run/banger/kit;
 * - `/dev/console`, and the directories the init mounts on.
 *
 * The archive is written here, in Node, so every entry is owned by 0:0 (the
 * orchestrator runs unprivileged) and the bytes are the same for the same
 * inputs (mtime 0, inodes numbered in order).
 *
 * The scripts are read at run time from `src/guest/init/` of the checkout,
 * which is `../../src/guest/init/` from both this file and its compiled copy
 * in `dist/guest/` (tsc does not copy non-TypeScript files).
 */
import { randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { open, readFile, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import { createGzip } from "node:zlib";
import { DEFAULT_BUSYBOX, FailedPreconditionError, InternalError, readStaticBusybox } from "@banger/common";
import { decompress, type Compression, type ToolRunner } from "./decompress.js";
import { buildKit, type BuildKitOptions, type KitSummary } from "./kit.js";

/** The static busybox put into the initramfs unless told otherwise (Debian's busybox-static installs it). */
export { DEFAULT_BUSYBOX } from "@banger/common";

/** Where banger's init scripts live (see the file comment). */
// Two levels below the package both from tsc's dist/guest/ and from the bundle in dist/bundle/.
export const INIT_SCRIPTS_DIR = fileURLToPath(new URL("../../src/guest/init/", import.meta.url));

/** A module the initramfs loads, unless the kernel has it built in. */
export interface WantedModule {
  /** Module name as modules.dep names it without ".ko" ("-" and "_" are the same). */
  readonly name: string;
  /** Without it the guest cannot boot: a kernel that has it neither built in nor as a module is refused. */
  readonly required: boolean;
  readonly purpose: string;
}

/** What the initramfs loads, in this order (each after what it depends on). */
export const INITRAMFS_MODULES: readonly WantedModule[] = [
  { name: "virtio_mmio", required: true, purpose: "the virtio-mmio bus of microVMs" },
  { name: "virtio_blk", required: true, purpose: "the root and work disks" },
  { name: "virtio_net", required: true, purpose: "the network interface" },
  { name: "crc32c_generic", required: false, purpose: "ext4 and jbd2 metadata checksums" },
  { name: "crc32c_intel", required: false, purpose: "ext4 checksums with SSE4.2" },
  { name: "ext4", required: true, purpose: "the root and work file systems" },
  { name: "vmw_vsock_virtio_transport", required: false, purpose: "vsock (Firecracker)" },
  {
    name: "virtio_console",
    required: false,
    purpose: "virtio-serial, the guest agent's port on QEMU (org.qemu.guest_agent.0)",
  },
  { name: "virtio_rng", required: false, purpose: "entropy from the host (Firecracker's entropy device)" },
  { name: "button", required: false, purpose: "the ACPI power button (QEMU's system_powerdown)" },
  { name: "evdev", required: false, purpose: "input events, where acpid reads the power button" },
];

/** A module to put into the initramfs. */
export interface PlannedModule {
  /** Normalised name ("_" for "-"). */
  readonly name: string;
  /** Its file name in the archive, without ".ko": the original base name ("crc32c-intel"). */
  readonly file: string;
  /** Path relative to the modules tree, as modules.dep gives it (may end in .ko.xz, .ko.zst, .ko.gz). */
  readonly path: string;
}

export interface ModulePlan {
  /** In load order: every module after the ones it needs. */
  readonly load: readonly PlannedModule[];
  /** Wanted modules the kernel has built in (nothing to load). */
  readonly builtin: readonly string[];
  /** Optional modules the kernel has neither built in nor as a module. */
  readonly absent: readonly string[];
}

/** The text of a modules tree's index files (modules.alias and modules.softdep may be empty). */
export interface ModuleIndex {
  readonly dep: string;
  readonly builtin: string;
  readonly alias: string;
  readonly softdep: string;
}

const normalise = (name: string): string => name.replace(/-/g, "_");
const moduleFile = (path: string): string => basename(path).replace(/\.ko(\.(xz|zst|gz))?$/, "");

/**
 * What to load for `wanted` from a kernel's module index: each wanted module
 * not built in, its hard dependencies (modules.dep) and its `pre:` soft
 * dependencies (modules.softdep, names resolved through modules.alias), each
 * once, dependencies first. Errors: FAILED_PRECONDITION KERNEL_MODULE_MISSING
 * naming the required modules the kernel lacks.
 */
export function planModules(index: ModuleIndex, wanted: readonly WantedModule[] = INITRAMFS_MODULES): ModulePlan {
  const deps = new Map<string, { path: string; deps: string[] }>();
  for (const line of index.dep.split("\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const path = line.slice(0, colon).trim();
    const needs = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .filter((p) => p !== "")
      .map((p) => normalise(moduleFile(p)));
    deps.set(normalise(moduleFile(path)), { path, deps: needs });
  }
  const pathOf = new Map([...deps].map(([name, entry]) => [name, entry.path]));
  const builtin = new Set(
    index.builtin
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map((l) => normalise(moduleFile(l.trim()))),
  );
  const aliases = new Map<string, string[]>();
  for (const line of index.alias.split("\n")) {
    const [word, alias, module] = line.trim().split(/\s+/);
    if (word !== "alias" || alias === undefined || module === undefined) continue;
    aliases.set(alias, [...(aliases.get(alias) ?? []), normalise(module)]);
  }
  const softPre = new Map<string, string[]>();
  for (const line of index.softdep.split("\n")) {
    const words = line.trim().split(/\s+/);
    if (words[0] !== "softdep" || words[1] === undefined) continue;
    const pre: string[] = [];
    let inPre = false;
    for (const word of words.slice(2)) {
      if (word.endsWith(":")) inPre = word === "pre:";
      else if (inPre) pre.push(word);
    }
    softPre.set(normalise(words[1]), pre);
  }

  const load: PlannedModule[] = [];
  const placed = new Set<string>();
  const visiting = new Set<string>();
  const visit = (name: string): void => {
    if (placed.has(name) || visiting.has(name) || builtin.has(name)) return;
    const entry = deps.get(name);
    if (!entry) return;
    visiting.add(name);
    // modules.dep lists dependencies nearest first; the last one is loaded first.
    for (const dep of [...entry.deps].reverse()) visit(dep);
    for (const soft of softPre.get(name) ?? []) {
      // A soft dependency is a module name or an alias; any one module that provides it will do.
      const candidates = deps.has(normalise(soft)) ? [normalise(soft)] : (aliases.get(soft) ?? []);
      for (const candidate of candidates) visit(candidate);
    }
    visiting.delete(name);
    placed.add(name);
    load.push({ name, file: moduleFile(entry.path), path: entry.path });
  };

  const missing: WantedModule[] = [];
  const absent: string[] = [];
  const inKernel: string[] = [];
  for (const module of wanted) {
    const name = normalise(module.name);
    if (builtin.has(name)) inKernel.push(name);
    else if (pathOf.has(name)) visit(name);
    else if (module.required) missing.push(module);
    else absent.push(name);
  }
  if (missing.length > 0) {
    throw new FailedPreconditionError(
      `the kernel has neither built in nor as a module: ${missing.map((m) => `${m.name} (${m.purpose})`).join(", ")}`,
      { reason: "KERNEL_MODULE_MISSING" },
    );
  }
  return { load, builtin: inKernel, absent };
}

/** Reads a modules tree's index files. Errors: FAILED_PRECONDITION KERNEL_MODULES_INCOMPLETE without modules.dep. */
export async function readModuleIndex(modulesDir: string): Promise<ModuleIndex> {
  const read = async (file: string, required: boolean): Promise<string> => {
    try {
      return await readFile(join(modulesDir, file), "utf8");
    } catch (error) {
      if (errnoOf(error) === "ENOENT" && !required) return "";
      if (errnoOf(error) === "ENOENT") {
        throw new FailedPreconditionError(
          `the kernel's modules have no ${file} (run depmod for them, or import the kernel package's lib/modules/<version> as it is installed)`,
          { reason: "KERNEL_MODULES_INCOMPLETE", cause: error },
        );
      }
      throw error;
    }
  };
  return {
    dep: await read("modules.dep", true),
    builtin: await read("modules.builtin", false),
    alias: await read("modules.alias", false),
    softdep: await read("modules.softdep", false),
  };
}

// ---------------------------------------------------------------- busybox

// The check is shared with the image puller, which builds the built-in image `tiny` from the same busybox.
export { elfLinking, readStaticBusybox } from "@banger/common";

// ---------------------------------------------------------------- cpio

/** An entry of a newc cpio archive; names are relative ("bin/busybox"), owned by 0:0. */
export type CpioEntry =
  | { readonly kind: "directory"; readonly name: string; readonly mode: number }
  | { readonly kind: "file"; readonly name: string; readonly mode: number; readonly data: Uint8Array }
  | { readonly kind: "symlink"; readonly name: string; readonly target: string }
  | {
      readonly kind: "char-device";
      readonly name: string;
      readonly mode: number;
      readonly major: number;
      readonly minor: number;
    };

const TYPE_BITS = { directory: 0o040000, file: 0o100000, symlink: 0o120000, "char-device": 0o020000 } as const;

/** The archive as buffers: each entry's header, name and data (each padded to 4 bytes), then the trailer. */
export function* cpioNewc(entries: Iterable<CpioEntry>): Generator<Buffer> {
  let inode = 1;
  const record = function* (fields: {
    name: string;
    mode: number;
    nlink: number;
    data: Uint8Array;
    rdev?: [number, number];
  }): Generator<Buffer> {
    const name = Buffer.from(`${fields.name}\0`);
    const hex = (n: number) => n.toString(16).padStart(8, "0");
    const header = [
      "070701",
      hex(fields.name === "TRAILER!!!" ? 0 : inode++),
      hex(fields.mode),
      hex(0), // uid
      hex(0), // gid
      hex(fields.nlink),
      hex(0), // mtime
      hex(fields.data.length),
      hex(0), // dev major
      hex(0), // dev minor
      hex(fields.rdev?.[0] ?? 0),
      hex(fields.rdev?.[1] ?? 0),
      hex(name.length),
      hex(0), // check
    ].join("");
    yield Buffer.concat([Buffer.from(header, "latin1"), name, pad(110 + name.length)]);
    if (fields.data.length > 0) {
      yield Buffer.from(fields.data.buffer, fields.data.byteOffset, fields.data.length);
      yield pad(fields.data.length);
    }
  };
  for (const entry of entries) {
    if (entry.name === "" || entry.name.startsWith("/") || entry.name.split("/").includes("..")) {
      throw new InternalError(`cpio entry name ${JSON.stringify(entry.name)} must be relative and normalised`);
    }
    switch (entry.kind) {
      case "directory":
        yield* record({ name: entry.name, mode: TYPE_BITS.directory | entry.mode, nlink: 2, data: new Uint8Array() });
        break;
      case "file":
        yield* record({ name: entry.name, mode: TYPE_BITS.file | entry.mode, nlink: 1, data: entry.data });
        break;
      case "symlink":
        yield* record({ name: entry.name, mode: TYPE_BITS.symlink | 0o777, nlink: 1, data: Buffer.from(entry.target) });
        break;
      case "char-device":
        yield* record({
          name: entry.name,
          mode: TYPE_BITS["char-device"] | entry.mode,
          nlink: 1,
          data: new Uint8Array(),
          rdev: [entry.major, entry.minor],
        });
        break;
    }
  }
  yield* record({ name: "TRAILER!!!", mode: 0, nlink: 1, data: new Uint8Array() });
}

function pad(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

// ---------------------------------------------------------------- build

export interface BuildInitramfsOptions {
  /** The kernel's `lib/modules/<version>` tree (in the catalog: `<kernel dir>/modules`). */
  readonly modulesDir: string;
  /** Where to write the initramfs; written beside it first, then renamed into place. */
  readonly output: string;
  /** The static busybox to include; default `DEFAULT_BUSYBOX`. */
  readonly busybox?: string | undefined;
  /** Where init.sh and minimal-init.sh are; default `INIT_SCRIPTS_DIR`. */
  readonly initScriptsDir?: string | undefined;
  /** Default `INITRAMFS_MODULES`. */
  readonly modules?: readonly WantedModule[] | undefined;
  readonly signal?: AbortSignal | undefined;
  /** Runs xz/zstd for compressed modules (tests). */
  readonly run?: ToolRunner | undefined;
  /** The guest kit's programs and tools (tests); default `KIT_PROGRAMS` made with ldd and patchelf; "none" leaves it out (tests). */
  readonly kit?: BuildKitOptions | "none" | undefined;
}

export interface InitramfsSummary {
  /** Size of the written file. */
  readonly bytes: number;
  /** Modules it loads, in order (normalised names). */
  readonly modules: readonly string[];
  /** Wanted modules the kernel has built in. */
  readonly builtin: readonly string[];
  /** Optional modules the kernel lacks. */
  readonly absent: readonly string[];
  /** banger's guest kit in it. */
  readonly kit: KitSummary;
}

/**
 * Builds the initramfs for the modules tree `modulesDir` into `output`.
 * Errors: FAILED_PRECONDITION BUSYBOX_MISSING, BUSYBOX_NOT_STATIC,
 * KERNEL_MODULES_INCOMPLETE, KERNEL_MODULE_MISSING, HOST_TOOL_MISSING (xz or
 * zstd for compressed modules; ldd, patchelf for the kit), KIT_PROGRAM_MISSING.
 */
export async function buildInitramfs(options: BuildInitramfsOptions): Promise<InitramfsSummary> {
  const busybox = await readStaticBusybox(options.busybox ?? DEFAULT_BUSYBOX);
  const plan = planModules(await readModuleIndex(options.modulesDir), options.modules ?? INITRAMFS_MODULES);
  const scriptsDir = options.initScriptsDir ?? INIT_SCRIPTS_DIR;
  const script = async (file: string) => {
    try {
      return await readFile(join(scriptsDir, file));
    } catch (error) {
      throw new InternalError(`banger's ${file} is missing from ${scriptsDir}`, { cause: error });
    }
  };
  const kit =
    options.kit === "none"
      ? { entries: [], summary: { programs: [], libraries: [], bytes: 0, dropbearRereadsHostKeys: false } }
      : await buildKit({ signal: options.signal, ...options.kit });
  const entries: CpioEntry[] = [
    ...["bin", "dev", "proc", "sys", "newroot", "banger", "lib", "lib/modules", "lib/modules/banger"].map(
      (name): CpioEntry => ({ kind: "directory", name, mode: 0o755 }),
    ),
    { kind: "char-device", name: "dev/console", mode: 0o600, major: 5, minor: 1 },
    { kind: "file", name: "init", mode: 0o755, data: await script("init.sh") },
    { kind: "file", name: "banger/minimal-init", mode: 0o755, data: await script("minimal-init.sh") },
    { kind: "file", name: "bin/busybox", mode: 0o755, data: busybox },
    { kind: "symlink", name: "bin/sh", target: "busybox" },
    ...kit.entries,
    ...(kit.entries.length === 0
      ? []
      : [
          { kind: "file", name: "banger/kit/start", mode: 0o755, data: await script("kit-start.sh") } as const,
          { kind: "file", name: "banger/kit/poweroff", mode: 0o755, data: await script("kit-poweroff.sh") } as const,
        ]),
  ];
  for (const module of plan.load) {
    options.signal?.throwIfAborted();
    entries.push({
      kind: "file",
      name: `lib/modules/banger/${module.file}.ko`,
      mode: 0o644,
      data: await readModule(join(options.modulesDir, module.path), options),
    });
  }
  entries.push({
    kind: "file",
    name: "lib/modules/banger/order",
    mode: 0o644,
    data: Buffer.from(plan.load.map((m) => `${m.file}\n`).join("")),
  });

  const partial = join(dirname(options.output), `.${basename(options.output)}.${randomBytes(4).toString("hex")}`);
  try {
    await pipeline(
      Readable.from(cpioNewc(entries)),
      createGzip({ level: 6 }),
      createWriteStream(partial, { mode: 0o644 }),
      options.signal ? { signal: options.signal } : {},
    );
    const handle = await open(partial, "r");
    await handle.sync().finally(() => handle.close());
    await rename(partial, options.output);
  } catch (error) {
    await rm(partial, { force: true });
    throw error;
  }
  return {
    bytes: (await stat(options.output)).size,
    modules: plan.load.map((m) => m.name),
    builtin: plan.builtin,
    absent: plan.absent,
    kit: kit.summary,
  };
}

/** A module file, decompressed (busybox insmod reads only plain .ko files). */
async function readModule(path: string, options: BuildInitramfsOptions): Promise<Buffer> {
  const bytes = await readFile(path);
  const compression: Compression | undefined = path.endsWith(".ko.xz")
    ? "xz"
    : path.endsWith(".ko.zst")
      ? "zstd"
      : path.endsWith(".ko.gz")
        ? "gzip"
        : undefined;
  return compression === undefined ? bytes : decompress(compression, bytes, options);
}

function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}
