/**
 * banger's guest kit: an SSH server (dropbear) and a guest agent (qemu-ga,
 * the QEMU guest agent) that banger brings into every guest, whatever the
 * image ships, inside its initramfs (initramfs.ts) at `banger/kit/`.
 *
 * They are the host's own Debian binaries (dropbear-bin, qemu-guest-agent),
 * made self-contained when the initramfs is built: each is copied with every
 * shared library `ldd` names and the dynamic loader, and patched (patchelf)
 * so that its interpreter is the kit's loader and its RPATH the kit's
 * library directory, both under `KIT_DIR` (`/run/banger/kit`, where the
 * initramfs's /init copies the kit, on a tmpfs of the guest's /run). They so
 * run on glibc, musl and libc-less images alike, on a read-only root too.
 * RPATH (not RUNPATH) is used because it also applies to the libraries'
 * own dependencies, and a patched interpreter (rather than running
 * `ld.so --library-path … dropbear`) keeps /proc/self/exe the program
 * itself: dropbear re-executes itself through it for every connection.
 *
 * Nothing is downloaded: the programs come from the host's packages at
 * `banger kernel initramfs` time.
 */
import { constants } from "node:fs";
import { access, mkdtemp, readFile, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { FailedPreconditionError } from "@banger/common";
import { runTool, type ToolRunner } from "./decompress.js";
import type { CpioEntry } from "./initramfs.js";
import { CommonReason } from "@banger/common/reasons";

/** Where the guest's /init puts the kit (a tmpfs); the patched programs find their loader and libraries there. */
export const KIT_DIR = "/run/banger/kit";

/** The vsock port the agent listens on in Firecracker guests (hybrid vsock: `CONNECT 1024`). */
export const AGENT_VSOCK_PORT = 1024;

/** The virtio-serial port name the agent serves in QEMU guests (qemu-ga's default name). */
export const AGENT_PORT_NAME = "org.qemu.guest_agent.0";

/** A program of the kit: where the host has it, and the Debian package that installs it there. */
export interface KitProgram {
  readonly name: string;
  readonly hostPath: string;
  readonly pkg: string;
}

export const KIT_PROGRAMS: readonly KitProgram[] = [
  { name: "dropbear", hostPath: "/usr/sbin/dropbear", pkg: "dropbear-bin" },
  { name: "dropbearkey", hostPath: "/usr/bin/dropbearkey", pkg: "dropbear-bin" },
  { name: "qemu-ga", hostPath: "/usr/sbin/qemu-ga", pkg: "qemu-guest-agent" },
];

/** What a kit holds, recorded beside the kernel's initrd (`initrd.kit.json`). */
export interface KitSummary {
  readonly programs: readonly string[];
  readonly libraries: readonly string[];
  readonly bytes: number;
  /** Its dropbear reads its host key again for every connection (see `DROPBEAR_REREADS_KEYS`). */
  readonly dropbearRereadsHostKeys: boolean;
}

/**
 * Present in a kit (`$KIT_DIR/dropbear-rereads-host-keys`) whose dropbear reads its host key again for every
 * connection: from 2022.82 on, dropbear re-executes itself per connection and the new process loads the key
 * files anew. A fork's identity then leaves that dropbear running (new connections get the new key) instead
 * of ending it for its supervisor to start again, which costs a guest under TCG a few hundred ms.
 */
export const DROPBEAR_REREADS_KEYS = "dropbear-rereads-host-keys";

/**
 * Whether a dropbear binary re-executes itself per connection, from the version in its SSH identification
 * string (`SSH-2.0-dropbear_2022.83`, in the binary as `dropbear_2022.83`): 2022.82 or later.
 */
export function dropbearRereadsKeys(binary: Uint8Array): boolean {
  const version = /dropbear_(\d{4})\.(\d+)/.exec(Buffer.from(binary).toString("latin1"));
  if (!version?.[1] || !version[2]) return false;
  const [year, release] = [Number(version[1]), Number(version[2])];
  return year > 2022 || (year === 2022 && release >= 82);
}

export interface BuildKitOptions {
  /** Default `KIT_PROGRAMS`. */
  readonly programs?: readonly KitProgram[] | undefined;
  /** Runs ldd and patchelf (tests). */
  readonly run?: ToolRunner | undefined;
  readonly signal?: AbortSignal | undefined;
}

/**
 * The kit's cpio entries under `banger/kit/` (bin/, lib/) and what it holds.
 * Errors: FAILED_PRECONDITION KIT_PROGRAM_MISSING (naming the Debian package),
 * HOST_TOOL_MISSING (ldd, patchelf).
 */
export async function buildKit(options: BuildKitOptions = {}): Promise<{ entries: CpioEntry[]; summary: KitSummary }> {
  const run = options.run ?? runTool;
  const programs = options.programs ?? KIT_PROGRAMS;
  const tool = async (argv: readonly string[], pkg: string): Promise<Buffer> => {
    try {
      return await run(argv, new Uint8Array(), options.signal);
    } catch (error) {
      if (error instanceof FailedPreconditionError && error.reason === CommonReason.HOST_TOOL_MISSING) {
        throw new FailedPreconditionError(
          `${argv[0]} is not installed: banger's guest kit is made with it (Debian package ${pkg})`,
          { reason: "HOST_TOOL_MISSING", cause: error },
        );
      }
      throw error;
    }
  };
  const libraries = new Map<string, string>(); // name in the kit → host path
  let interpreter: string | undefined;
  for (const program of programs) {
    try {
      await access(program.hostPath, constants.X_OK);
    } catch (error) {
      throw new FailedPreconditionError(
        `${program.hostPath} is missing: banger's guest kit needs ${program.name} (apt install ${program.pkg})`,
        { reason: "KIT_PROGRAM_MISSING", cause: error },
      );
    }
    const deps = parseLdd((await tool(["ldd", program.hostPath], "libc-bin")).toString());
    for (const lib of deps.libraries) libraries.set(lib.name, lib.path);
    interpreter ??= deps.interpreter;
  }
  if (interpreter === undefined) {
    throw new FailedPreconditionError("ldd named no dynamic loader for the kit's programs", {
      reason: "KIT_PROGRAM_MISSING",
    });
  }
  const loader = basename(interpreter);
  const entries: CpioEntry[] = ["banger/kit", "banger/kit/bin", "banger/kit/lib"].map((name) => ({
    kind: "directory",
    name,
    mode: 0o755,
  }));
  let rereads = false;
  const work = await mkdtemp(join(tmpdir(), "banger-kit-"));
  try {
    for (const program of programs) {
      const out = join(work, program.name);
      await tool(
        [
          "patchelf",
          "--set-interpreter",
          `${KIT_DIR}/lib/${loader}`,
          "--force-rpath",
          "--set-rpath",
          `${KIT_DIR}/lib`,
          "--output",
          out,
          program.hostPath,
        ],
        "patchelf",
      );
      const data = await readFile(out);
      entries.push({ kind: "file", name: `banger/kit/bin/${program.name}`, mode: 0o755, data });
      if (program.name === "dropbear") rereads = dropbearRereadsKeys(data);
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  for (const [name, path] of [...libraries, [loader, interpreter] as const].sort(([a], [b]) => a.localeCompare(b))) {
    entries.push({
      kind: "file",
      name: `banger/kit/lib/${name}`,
      mode: 0o755,
      data: await readFile(await realpath(path)),
    });
  }
  if (rereads) {
    const note = "this kit's dropbear re-executes itself per connection: it reads its host key anew for each\n";
    entries.push({ kind: "file", name: `banger/kit/${DROPBEAR_REREADS_KEYS}`, mode: 0o644, data: Buffer.from(note) });
  }
  const bytes = entries.reduce((sum, entry) => sum + (entry.kind === "file" ? entry.data.length : 0), 0);
  return {
    entries,
    summary: {
      programs: programs.map((p) => p.name),
      libraries: [...libraries.keys(), loader].sort(),
      bytes,
      dropbearRereadsHostKeys: rereads,
    },
  };
}

/** ldd's output: the libraries (`name => path (addr)`) and the loader (`/lib64/ld-… (addr)`). */
export function parseLdd(output: string): {
  libraries: { name: string; path: string }[];
  interpreter: string | undefined;
} {
  const libraries: { name: string; path: string }[] = [];
  let interpreter: string | undefined;
  for (const line of output.split("\n")) {
    const linked = /^\s*(\S+) => (\/\S+) \(0x[0-9a-f]+\)\s*$/.exec(line);
    if (linked?.[1] && linked[2]) {
      libraries.push({ name: linked[1], path: linked[2] });
      continue;
    }
    if (/ => not found/.test(line)) {
      throw new FailedPreconditionError(`a library of banger's guest kit is missing on this host: ${line.trim()}`, {
        reason: "KIT_PROGRAM_MISSING",
      });
    }
    const loader = /^\s*(\/\S*ld-linux\S*) \(0x[0-9a-f]+\)\s*$/.exec(line);
    if (loader?.[1]) interpreter = loader[1];
  }
  return { libraries, interpreter };
}
