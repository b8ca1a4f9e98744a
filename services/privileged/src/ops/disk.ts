/**
 * Loop devices, dm-snapshots and changes to a VM's root block device.
 *
 * Host files are named by the caller only as paths inside banger's state
 * directory; they are opened by `openConfined` and the open file (not the
 * path) is handed to losetup. Loop and dm teardown re-reads the kernel's own
 * record (the loop's backing file in sysfs, the dm uuid) before acting, so the
 * helper never detaches or removes a device that is not banger's. Guest files
 * are written with one batched `debugfs` script and verified by reading them
 * back. e2fsck and debugfs parse filesystems a guest has written: they run as
 * the owner, on a device or file the owner may open, so a parser bug gains an
 * attacker nothing the owner did not have. Every request is validated
 * completely before the first host command runs: a refused request changes
 * nothing.
 */
import { chmod, lstat, mkdtemp, open, readdir, readFile, rm, type FileHandle } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  HostCommandError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  debugfsErrors,
  debugfsSections,
  parseDebugfsStat,
  type DebugfsStat,
} from "@banger/common";
import type { HelperConfig } from "../config.js";
import type { RunOptions, Runner } from "@banger/common";
import { guestParents, validGuestPath } from "../validate/guest-paths.js";
import { snapshotName, snapshotUuid, validVmId } from "../validate/ids.js";
import { deviceMapperStatus } from "../host/features.js";
import { confinedPath, isInsideStateDir, openConfined } from "../validate/paths.js";
import { withUndo } from "./undo.js";

/** A loop device whose backing file is inside banger's state directory. */
export interface LoopInfo {
  device: string;
  backingFile: string;
  readOnly: boolean;
}

/** A dm device whose uuid carries banger's prefix. */
export interface SnapshotInfo {
  name: string;
  uuid: string;
  /** The VM the uuid names; empty if the rest of the uuid is not a valid VM id. */
  vmId: string;
  device: string;
}

/** A file to write into a guest filesystem. */
export interface GuestFileSpec {
  /** Absolute guest path (see validGuestPath). */
  path: string;
  /** At most 1 MiB. */
  content: Uint8Array;
  /** Permission bits including setuid/setgid/sticky, at most 0o7777. */
  mode: number;
  uid: number;
  gid: number;
}

export interface DiskOps {
  attachLoop(req: { path: string; readOnly: boolean }, signal?: AbortSignal): Promise<{ device: string }>;
  detachLoop(req: { device: string; path: string }, signal?: AbortSignal): Promise<{ existed: boolean }>;
  createSnapshot(
    req: { vmId: string; originDevice: string; cowDevice: string },
    signal?: AbortSignal,
  ): Promise<{ name: string; device: string }>;
  removeSnapshot(req: { vmId: string }, signal?: AbortSignal): Promise<{ existed: boolean }>;
  checkFilesystem(req: { vmId: string }, signal?: AbortSignal): Promise<{ exitCode: number; outputTail: string }>;
  writeGuestFiles(
    req: { vmId: string; files: readonly GuestFileSpec[] },
    signal?: AbortSignal,
  ): Promise<{ written: number }>;
  removeGuestFiles(req: { vmId: string; paths: readonly string[] }, signal?: AbortSignal): Promise<{ removed: number }>;
  /** Loop devices whose backing file is inside the state directory. */
  listLoops(): Promise<LoopInfo[]>;
  /** dm devices whose uuid has banger's prefix; empty where the kernel has no device-mapper. */
  listSnapshots(): Promise<SnapshotInfo[]>;
}

export interface DiskDeps {
  readonly runner: Runner;
  readonly config: HelperConfig;
  /** Where sysfs is mounted (tests point it at a fake tree). Default `/sys`. */
  readonly sysfsRoot?: string;
  /** Where device nodes live (`<devRoot>/mapper/control`). Default `/dev`. */
  readonly devRoot?: string;
  /** Where procfs is mounted (`<procRoot>/misc` tells whether the device-mapper driver is there). Default `/proc`. */
  readonly procRoot?: string;
}

const LOOP_DEVICE = /^\/dev\/(loop[0-9]{1,4})$/;
const LOOP_NAME = /^loop[0-9]{1,4}$/;
export const MAX_GUEST_FILES = 256;
export const MAX_GUEST_FILE_BYTES = 1024 * 1024;
/** Largest uid/gid (2^32 - 1 is "no id"). */
const MAX_GUEST_ID = 2 ** 32 - 2;
const OUTPUT_TAIL_LINES = 20;
const OUTPUT_TAIL_CHARS = 4096;
/** banger's dm uuid prefix, as snapshotUuid spells it. */
const UUID_PREFIX = snapshotUuid("x").slice(0, -1);
/** A host path debugfs reads literally (the helper's own temp files). */
const DEBUGFS_SAFE_HOST_PATH = /^[A-Za-z0-9._+@=:,~/-]+$/;

export function createDiskOps(deps: DiskDeps): DiskOps {
  const { runner, config } = deps;
  const stateDir = config.stateDir;
  const sysfs = deps.sysfsRoot ?? "/sys";
  const dev = deps.devRoot ?? "/dev";
  const proc = deps.procRoot ?? "/proc";
  /** The driver, not the node: /dev/mapper/control can exist on a kernel without device-mapper. */
  const deviceMapper = () => deviceMapperStatus({ dev, proc });
  const mapperNode = (name: string) => `${dev}/mapper/${name}`;
  /** The clone strategy's root disk of a VM. */
  const vmRootImage = (vmId: string) => join(stateDir, "vms", vmId, "root.ext4");
  /** e2fsprogs over guest-written filesystems run as the owner, never as root. */
  const asOwner = { as: { uid: config.ownerUid, gid: config.ownerGid } } as const;

  /** The kernel's record of a loop device; undefined when it is not attached. */
  async function loopInfo(name: string): Promise<LoopInfo | undefined> {
    try {
      const backing = await readFile(`${sysfs}/block/${name}/loop/backing_file`, "utf8");
      const ro = await readFile(`${sysfs}/block/${name}/ro`, "utf8");
      return {
        device: `/dev/${name}`,
        backingFile: backing.endsWith("\n") ? backing.slice(0, -1) : backing,
        readOnly: ro.trim() === "1",
      };
    } catch (error) {
      // A device detached between listing and reading (by another VM's create, or anyone) reads as gone.
      if (isErrno(error, "ENOENT") || isErrno(error, "ENODEV") || isErrno(error, "ENXIO")) return undefined;
      throw error;
    }
  }

  /** A loop device that is attached to a file inside the state directory. */
  async function bangerLoop(device: string, field: string): Promise<LoopInfo> {
    const info = await loopInfo(loopName(device, field));
    if (!info) throw new FailedPreconditionError(`${field} ${device} is not attached`, { reason: "LOOP_NOT_ATTACHED" });
    if (!isInsideStateDir(stateDir, info.backingFile)) {
      throw new PermissionDeniedError(`${field} ${device} is not backed by a file of banger's`, {
        reason: "NOT_BANGERS",
      });
    }
    return info;
  }

  /** A dm device's uuid; undefined when no device has that name. */
  async function dmUuid(name: string, signal?: AbortSignal): Promise<string | undefined> {
    try {
      const { stdout } = await runner.run(["dmsetup", "info", "-c", "--noheadings", "-o", "uuid", name], opts(signal));
      return stdout.trim();
    } catch (error) {
      if (error instanceof HostCommandError && /does not exist/i.test(error.stderrTail)) return undefined;
      throw error;
    }
  }

  function requireDeviceMapper(): void {
    const status = deviceMapper();
    if (!status.usable) {
      throw new FailedPreconditionError(`the kernel has no usable device-mapper (${status.why})`, {
        reason: "DEVICE_MAPPER_ABSENT",
      });
    }
  }

  /**
   * Runs `body` with the VM's root disk as e2fsprogs (running as the owner)
   * name it: the VM's dm-snapshot when there is one (and it is banger's; its
   * node is the owner's), else the owner's clone `<stateDir>/vms/<vm_id>/root.ext4`,
   * opened by `openConfined` and handed over as `/dev/fd/3` (the tool reopens
   * that very file, with the owner's rights).
   */
  async function withRootDisk<T>(
    vmId: string,
    signal: AbortSignal | undefined,
    body: (disk: RootDisk) => Promise<T>,
  ): Promise<T> {
    const name = snapshotName(vmId);
    if (deviceMapper().usable && (await present(mapperNode(name)))) {
      const uuid = await dmUuid(name, signal);
      if (uuid === snapshotUuid(vmId)) return body({ path: mapperNode(name), fds: [], shown: mapperNode(name) });
      if (uuid !== undefined) {
        throw new PermissionDeniedError(`dm device ${name} exists but banger did not make it`, {
          reason: "NOT_BANGERS",
        });
      }
    }
    const image = vmRootImage(vmId);
    let handle: FileHandle;
    try {
      handle = await openConfined(stateDir, image, { write: true, ownerUid: config.ownerUid });
    } catch (error) {
      if (error instanceof NotFoundError) {
        throw new FailedPreconditionError(`VM ${vmId} has no root disk (no dm-snapshot, no ${image})`, {
          reason: "VM_DISK_NOT_ATTACHED",
          cause: error,
        });
      }
      throw error;
    }
    try {
      return await body({ path: "/dev/fd/3", fds: [handle.fd], shown: image });
    } finally {
      await handle.close();
    }
  }

  async function listLoops(): Promise<LoopInfo[]> {
    let names: string[];
    try {
      names = await readdir(`${sysfs}/block`);
    } catch (error) {
      if (isErrno(error, "ENOENT")) return [];
      throw error;
    }
    const loops = names.filter((n) => LOOP_NAME.test(n)).sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));
    const infos = await Promise.all(loops.map(loopInfo));
    return infos.filter((i): i is LoopInfo => i !== undefined && isInsideStateDir(stateDir, i.backingFile));
  }

  /** Runs a debugfs script (`-w` when `write`) on a VM's root disk, as the owner. */
  async function debugfs(disk: RootDisk, lines: readonly string[], write: boolean, signal?: AbortSignal) {
    const result = await runner.run(["debugfs", ...(write ? ["-w"] : []), "-f", "-", disk.path], {
      stdin: `${lines.join("\n")}\n`,
      fds: disk.fds,
      ...asOwner,
      ...opts(signal),
    });
    // debugfs goes on (and exits 0) when it cannot open the disk: every command then fails.
    refuseUnopened(disk, result.stderr);
    return result;
  }

  /** `stat` of each guest path (read-only); undefined for the missing ones. Optionally dumps each into `dumps[i]`. */
  async function statGuest(
    disk: RootDisk,
    paths: readonly string[],
    signal?: AbortSignal,
    dumps?: readonly string[],
  ): Promise<Map<string, DebugfsStat | undefined>> {
    const lines = paths.flatMap((p, i) => [`stat ${p}`, ...(dumps === undefined ? [] : [`dump ${p} ${dumps[i]}`])]);
    const { stdout } = await debugfs(disk, lines, false, signal);
    const sections = debugfsSections(stdout);
    return new Map(paths.map((p) => [p, parseDebugfsStat(sections.get(`stat ${p}`) ?? "")]));
  }

  /** Writes `files` into the disk with one debugfs script, then reads them back. */
  async function writeFiles(disk: RootDisk, files: readonly GuestFileSpec[], signal?: AbortSignal) {
    // The last spec for each path is what the filesystem must hold at the end.
    const final = new Map(files.map((f) => [f.path, f]));
    const paths = [...final.keys()];
    const parents = [...new Set(paths.flatMap(guestParents))].filter((p) => !final.has(p));
    const before = await statGuest(disk, [...paths, ...parents], signal);
    refuseDirectories(new Map(paths.map((p) => [p, before.get(p)])));
    const notDirs = parents.filter((p) => {
      const type = before.get(p)?.type;
      return type !== undefined && type !== "directory" && type !== "symlink";
    });
    if (notDirs.length > 0) {
      throw new FailedPreconditionError(`${notDirs.join(", ")} is not a directory in the guest`, {
        reason: "GUEST_PARENT_NOT_DIRECTORY",
      });
    }

    await withPrivateTempDir(config, async (dir) => {
      const script: string[] = [];
      // Parents that exist (or will, once made) get no mkdir: debugfs has no `mkdir -p`.
      const made = new Set(parents.filter((p) => before.get(p) !== undefined));
      const existing = new Set(paths.filter((p) => before.get(p) !== undefined));
      for (const [i, file] of files.entries()) {
        const { path: source } = await dir.ownersFile(`f${i}`, file.content);
        for (const parent of guestParents(file.path)) {
          if (!made.has(parent)) script.push(`mkdir ${parent}`);
          made.add(parent);
        }
        if (existing.has(file.path)) script.push(`rm ${file.path}`);
        script.push(
          `write ${source} ${file.path}`,
          `sif ${file.path} mode 0${(0o100000 | file.mode).toString(8)}`,
          `sif ${file.path} uid ${file.uid}`,
          `sif ${file.path} gid ${file.gid}`,
        );
        existing.add(file.path);
      }
      const { stderr } = await debugfs(disk, script, true, signal);

      // Verify by reading back: type, mode, owner and the exact bytes.
      const dumps: OwnersFile[] = [];
      for (const i of paths.keys()) dumps.push(await dir.ownersFile(`v${i}`, new Uint8Array()));
      const after = await statGuest(
        disk,
        paths,
        signal,
        dumps.map((d) => d.path),
      );
      const wrong: string[] = [];
      for (const [i, path] of paths.entries()) {
        const want = final.get(path);
        const got = after.get(path);
        if (!want || !got) {
          wrong.push(`${path}: missing`);
          continue;
        }
        if (got.type !== "regular" || got.mode !== want.mode || got.uid !== want.uid || got.gid !== want.gid) {
          wrong.push(`${path}: ${got.type} mode 0${got.mode.toString(8)} owner ${got.uid}:${got.gid}`);
        } else if (
          got.size !== want.content.byteLength ||
          !(await dumps[i]?.read(want.content.byteLength + 1))?.equals(want.content)
        ) {
          wrong.push(`${path}: content differs`);
        }
      }
      if (wrong.length > 0) {
        throw new FailedPreconditionError(
          `writing guest files on ${disk.shown} failed (${wrong.join("; ")})${debugfsErrors(stderr)}`,
          { reason: "GUEST_WRITE_FAILED" },
        );
      }
    });
    return { written: files.length };
  }

  /** Removes the guest files of `paths` that exist (refusing directories), then checks they are gone. */
  async function removeFiles(disk: RootDisk, paths: readonly string[], signal?: AbortSignal) {
    const before = await statGuest(disk, paths, signal);
    refuseDirectories(before);
    const present = paths.filter((p) => before.get(p) !== undefined);
    if (present.length === 0) return { removed: 0 };
    const { stderr } = await debugfs(
      disk,
      present.map((p) => `rm ${p}`),
      true,
      signal,
    );
    const after = await statGuest(disk, present, signal);
    const left = present.filter((p) => after.get(p) !== undefined);
    if (left.length > 0) {
      throw new FailedPreconditionError(
        `could not remove ${left.join(", ")} on ${disk.shown}${debugfsErrors(stderr)}`,
        {
          reason: "GUEST_REMOVE_FAILED",
        },
      );
    }
    return { removed: present.length };
  }

  return {
    async attachLoop(req, signal) {
      const handle = await openConfined(stateDir, req.path, { write: !req.readOnly, ownerUid: config.ownerUid });
      let stdout: string;
      try {
        ({ stdout } = await runner.run(
          ["losetup", "--find", "--show", ...(req.readOnly ? ["--read-only"] : []), "/dev/fd/3"],
          { fds: [handle.fd], ...opts(signal) },
        ));
      } finally {
        await handle.close();
      }
      const device = stdout.trim();
      const name = LOOP_DEVICE.exec(device)?.[1];
      if (name === undefined) {
        throw new InternalError(`losetup printed ${JSON.stringify(device)} instead of a loop device`, {
          reason: "UNEXPECTED_TOOL_OUTPUT",
        });
      }
      // Verify: the kernel must record the requested file (it is the file that was opened and checked).
      const info = await loopInfo(name);
      if (info?.backingFile !== req.path) {
        if (info) await runner.run(["losetup", "-d", device]);
        throw new FailedPreconditionError(`${req.path} moved while it was being attached`, { reason: "PATH_CHANGED" });
      }
      return { device };
    },

    async detachLoop(req, signal) {
      const name = loopName(req.device, "device");
      const path = confinedPath(stateDir, req.path);
      const info = await loopInfo(name);
      if (!info) return { existed: false };
      if (info.backingFile !== path) {
        throw new PermissionDeniedError(`${req.device} is not backed by ${path}`, { reason: "NOT_BANGERS" });
      }
      try {
        await runner.run(["losetup", "-d", req.device], opts(signal));
      } catch (error) {
        if ((await loopInfo(name)) === undefined) return { existed: true }; // detached meanwhile
        throw error;
      }
      return { existed: true };
    },

    async createSnapshot(req, signal) {
      const vmId = validVmId(req.vmId);
      loopName(req.originDevice, "origin_device");
      loopName(req.cowDevice, "cow_device");
      if (req.originDevice === req.cowDevice) {
        throw new InvalidArgumentError("origin_device and cow_device must differ", { reason: "SAME_DEVICE" });
      }
      requireDeviceMapper();
      await bangerLoop(req.originDevice, "origin_device");
      await bangerLoop(req.cowDevice, "cow_device");
      const name = snapshotName(vmId);
      const uuid = snapshotUuid(vmId);
      const existing = await dmUuid(name, signal);
      if (existing === uuid) {
        throw new AlreadyExistsError(`VM ${vmId} already has its dm-snapshot ${name}`, { reason: "SNAPSHOT_EXISTS" });
      }
      if (existing !== undefined) {
        throw new PermissionDeniedError(`dm device ${name} exists but banger did not make it`, {
          reason: "NOT_BANGERS",
        });
      }
      const { stdout } = await runner.run(["blockdev", "--getsz", req.originDevice], opts(signal));
      const sectors = stdout.trim();
      if (!/^[1-9][0-9]*$/.test(sectors)) {
        throw new InternalError(`blockdev printed ${JSON.stringify(sectors)} as the size of ${req.originDevice}`, {
          reason: "UNEXPECTED_TOOL_OUTPUT",
        });
      }
      const node = mapperNode(name);
      await withUndo(async (onUndo) => {
        const table = `0 ${sectors} snapshot ${req.originDevice} ${req.cowDevice} P 8`;
        await runner.run(["dmsetup", "create", name, "--uuid", uuid, "--table", table], opts(signal));
        // Undo runs even when the request was cancelled: no signal.
        onUndo(() => runner.run(["dmsetup", "remove", name]));
        await runner.run(["chown", `${config.ownerUid}:${config.ownerGid}`, node], opts(signal));
      });
      return { name, device: node };
    },

    async removeSnapshot(req, signal) {
      const vmId = validVmId(req.vmId);
      if (!deviceMapper().usable) return { existed: false };
      const name = snapshotName(vmId);
      const uuid = await dmUuid(name, signal);
      if (uuid === undefined) return { existed: false };
      if (uuid !== snapshotUuid(vmId)) {
        throw new PermissionDeniedError(`dm device ${name} exists but banger did not make it`, {
          reason: "NOT_BANGERS",
        });
      }
      try {
        await runner.run(["dmsetup", "remove", name], opts(signal));
      } catch (error) {
        if ((await dmUuid(name)) === undefined) return { existed: true }; // removed meanwhile
        throw error;
      }
      return { existed: true };
    },

    async checkFilesystem(req, signal) {
      const vmId = validVmId(req.vmId);
      return withRootDisk(vmId, signal, async (disk) => {
        const argv = ["e2fsck", "-fy", disk.path];
        // Every exit code is taken here so that a failure keeps e2fsck's stdout, where it reports.
        const result = await runner.run(argv, { okCodes: ALL_EXIT_CODES, fds: disk.fds, ...asOwner, ...opts(signal) });
        const output = [result.stderr.trimEnd(), result.stdout.trimEnd()].filter((s) => s !== "").join("\n");
        if (result.code > 1) {
          refuseUnopened(disk, output);
          throw new HostCommandError(argv, result.code, output);
        }
        return { exitCode: result.code, outputTail: tail(output) };
      });
    },

    async writeGuestFiles(req, signal) {
      const vmId = validVmId(req.vmId);
      const files = validGuestFiles(req.files);
      if (files.length === 0) return { written: 0 };
      return withRootDisk(vmId, signal, (disk) => writeFiles(disk, files, signal));
    },

    async removeGuestFiles(req, signal) {
      const vmId = validVmId(req.vmId);
      if (req.paths.length > MAX_GUEST_FILES) {
        throw new InvalidArgumentError(`at most ${MAX_GUEST_FILES} paths`, { reason: "TOO_MANY_FILES" });
      }
      const paths = [...new Set(req.paths.map((p, i) => validGuestPath(p, `paths[${i}]`)))];
      if (paths.length === 0) return { removed: 0 };
      return withRootDisk(vmId, signal, (disk) => removeFiles(disk, paths, signal));
    },

    listLoops,

    async listSnapshots() {
      if (!deviceMapper().usable) return [];
      const { stdout } = await runner.run([
        "dmsetup",
        "info",
        "-c",
        "--noheadings",
        "-o",
        "name,uuid",
        "--separator",
        ",",
      ]);
      return stdout.split("\n").flatMap((line): SnapshotInfo[] => {
        const comma = line.lastIndexOf(",");
        if (comma < 0) return []; // "No devices found"
        const name = line.slice(0, comma).trim();
        const uuid = line.slice(comma + 1).trim();
        if (!uuid.startsWith(UUID_PREFIX)) return [];
        return [{ name, uuid, vmId: vmIdOrEmpty(uuid.slice(UUID_PREFIX.length)), device: mapperNode(name) }];
      });
    },
  };
}

/** What debugfs `stat` says about a guest inode. */

const ALL_EXIT_CODES = Array.from({ length: 256 }, (_, i) => i);

function opts(signal: AbortSignal | undefined): RunOptions {
  return signal ? { signal } : {};
}

/** `/dev/loopN` → `loopN`, or InvalidArgumentError. */
function loopName(device: string, field: string): string {
  const name = LOOP_DEVICE.exec(device)?.[1];
  if (name === undefined) {
    throw new InvalidArgumentError(`${field} must match ${LOOP_DEVICE.source}`, { reason: "INVALID_LOOP_DEVICE" });
  }
  return name;
}

function validGuestFiles(files: readonly GuestFileSpec[]): GuestFileSpec[] {
  if (files.length > MAX_GUEST_FILES) {
    throw new InvalidArgumentError(`at most ${MAX_GUEST_FILES} files`, { reason: "TOO_MANY_FILES" });
  }
  return files.map((file, i) => {
    const field = `files[${i}]`;
    validGuestPath(file.path, `${field}.path`);
    if (!(file.content instanceof Uint8Array) || file.content.byteLength > MAX_GUEST_FILE_BYTES) {
      throw new InvalidArgumentError(`${field}.content must be at most ${MAX_GUEST_FILE_BYTES} bytes`, {
        reason: "FILE_TOO_LARGE",
      });
    }
    if (!Number.isInteger(file.mode) || file.mode < 0 || file.mode > 0o7777) {
      throw new InvalidArgumentError(`${field}.mode must be 0–07777`, { reason: "INVALID_MODE" });
    }
    for (const [key, value] of [
      ["uid", file.uid],
      ["gid", file.gid],
    ] as const) {
      if (!Number.isInteger(value) || value < 0 || value > MAX_GUEST_ID) {
        throw new InvalidArgumentError(`${field}.${key} must be 0–${MAX_GUEST_ID}`, { reason: "INVALID_OWNER" });
      }
    }
    return file;
  });
}

function refuseDirectories(stats: Map<string, DebugfsStat | undefined>): void {
  const dirs = [...stats].filter(([, s]) => s?.type === "directory").map(([p]) => p);
  if (dirs.length > 0) {
    throw new FailedPreconditionError(`${dirs.join(", ")} is a directory in the guest`, {
      reason: "GUEST_PATH_IS_DIRECTORY",
    });
  }
}

/** A VM's root disk as e2fsprogs name it: a path, and the open files it refers to (fd 3, 4, …). */
interface RootDisk {
  readonly path: string;
  readonly fds: readonly number[];
  /** For messages: the device or file behind `path`. */
  readonly shown: string;
}

/**
 * e2fsprogs report a disk they may not open on stderr ("Permission denied
 * while trying to open …"); as they run as the owner, the owner may not open
 * it. (Other open failures, such as a bad superblock, stay the tool's error.)
 */
function refuseUnopened(disk: RootDisk, stderr: string): void {
  const line = stderr.split("\n").find((l) => /Permission denied while trying to open /.test(l));
  if (line === undefined) return;
  throw new PermissionDeniedError(
    `the owner may not open ${disk.shown}, and e2fsprogs run as the owner (${line.trim()})`,
    {
      reason: "OWNER_CANNOT_OPEN_DISK",
    },
  );
}

/** A file of the private temp directory, the owner's, that the helper keeps open. */
interface OwnersFile {
  readonly path: string;
  /**
   * At most `limit` bytes of what the file holds now, through the helper's own
   * descriptor (the installed helper has no CAP_DAC_OVERRIDE to open the
   * owner's 0600 file again; and the owner's tool wrote it: its size is not trusted).
   */
  read(limit: number): Promise<Buffer>;
}

/** A private temp directory whose files the owner's debugfs can use by name but nobody else can replace. */
interface PrivateTempDir {
  /** Creates `name` (new, 0600) holding `content`, owned by the owner. */
  ownersFile(name: string, content: Uint8Array): Promise<OwnersFile>;
}

/**
 * A directory under the system temp dir, root's and 0711 (the owner's tools
 * reach files in it by name, but cannot list, add, rename or remove any), its
 * files created by the helper and handed to the owner by descriptor; removed
 * afterwards whatever happens.
 */
async function withPrivateTempDir<T>(config: HelperConfig, body: (dir: PrivateTempDir) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "banger-guest-"));
  if (!DEBUGFS_SAFE_HOST_PATH.test(dir)) {
    await rm(dir, { recursive: true, force: true });
    throw new InternalError(`temp directory ${dir} has characters debugfs cannot take`, { reason: "UNSAFE_TEMP_DIR" });
  }
  const handles: FileHandle[] = [];
  const temp: PrivateTempDir = {
    async ownersFile(name, content) {
      const path = `${dir}/${name}`;
      const handle = await open(path, "wx+", 0o600);
      handles.push(handle);
      await handle.writeFile(content);
      await handle.chown(config.ownerUid, config.ownerGid);
      return { path, read: (limit) => readUpTo(handle, limit) };
    },
  };
  const cleanUp = async () => {
    for (const handle of handles.splice(0)) await handle.close();
    await rm(dir, { recursive: true, force: true });
  };
  let result: T;
  try {
    await chmod(dir, 0o711);
    result = await body(temp);
  } catch (error) {
    try {
      await cleanUp();
    } catch (cleanup) {
      if (error instanceof Error) error.message += ` (and removing ${dir} failed: ${String(cleanup)})`;
    }
    throw error;
  }
  await cleanUp();
  return result;
}

/** At most `limit` bytes of an open file, from its start. */
async function readUpTo(handle: FileHandle, limit: number): Promise<Buffer> {
  const buffer = Buffer.alloc(limit);
  let length = 0;
  while (length < limit) {
    const { bytesRead } = await handle.read(buffer, length, limit - length, length);
    if (bytesRead === 0) break;
    length += bytesRead;
  }
  return buffer.subarray(0, length);
}

function tail(text: string, lines = OUTPUT_TAIL_LINES): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n").slice(-OUTPUT_TAIL_CHARS);
}

async function present(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (error) {
    if (isErrno(error, "ENOENT")) return false;
    throw error;
  }
}

function isErrno(error: unknown, code: string): boolean {
  return error instanceof Error && (error as NodeJS.ErrnoException).code === code;
}

function vmIdOrEmpty(value: string): string {
  try {
    return validVmId(value);
  } catch {
    return "";
  }
}
