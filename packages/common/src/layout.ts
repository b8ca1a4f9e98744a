/**
 * Every path banger derives from its two directories, in one place (the
 * `VmDir` habit): the state directory (durable: the database, images,
 * kernels, VMs' disks) and the runtime directory (sockets, and each VM's VMM
 * sockets and logs). Nobody joins these names by hand.
 *
 * Ids and names are joined as given: callers validate them first (a VM id by
 * the helper's `validVmId`, an image or kernel name by its catalog), so a
 * component can never climb out of its directory.
 */
import { join } from "node:path";

/** Where the three services put their sockets when none is named: systemd's RuntimeDirectory. */
export const DEFAULT_RUNTIME_DIR = "/run/banger";
/** Where durable state lives when none is named: systemd's StateDirectory. */
export const DEFAULT_STATE_DIR = "/var/lib/banger";

/**
 * The alias on every link banger makes (`banger:bridge`, `banger:tap:<vm_id>`,
 * `banger:pool`): how the helper, and `banger system uninstall`, know banger's links.
 */
export const LINK_ALIAS_PREFIX = "banger:";
/** banger's nftables table (`ip banger`): the VMs' masquerade rules. */
export const NFT_TABLE = "banger";

/** The directory of VMs' directories, in the state and in the runtime directory alike (`<dir>/vms/<id>/`). */
export const VMS_DIR = "vms";

/** The names inside a VM's runtime directory `<runtime>/vms/<id>/`. */
export const VM_RUNTIME_FILES = {
  firecrackerSocket: "firecracker.sock",
  qmpSocket: "qmp.sock",
  /** The guest agent's socket under QEMU (virtio-serial). */
  agentSocket: "agent.sock",
  /** The guest agent's socket under Firecracker (hybrid vsock). */
  vsockSocket: "vsock.sock",
  consoleLog: "console.log",
  vmmLog: "vmm.log",
} as const;

/** A VM's runtime directory: its VMM's sockets and logs (made and removed by the helper). */
export interface VmRuntimeLayout {
  readonly dir: string;
  readonly firecrackerSocket: string;
  readonly qmpSocket: string;
  readonly agentSocket: string;
  readonly vsockSocket: string;
  readonly consoleLog: string;
  readonly vmmLog: string;
}

/** Every path derived from banger's runtime directory; nobody joins these by hand. */
export interface RuntimeLayout {
  readonly runtimeDir: string;
  readonly orchestratorSocket: string;
  readonly privilegedSocket: string;
  readonly pullerSocket: string;
  /** `<runtime>/vms`: root's, 0711; one directory per running VM. */
  readonly vmsDir: string;
  vm(vmId: string): VmRuntimeLayout;
}

/** The files of a VM's runtime directory `dir` (whatever its parent). */
export function vmRuntimeFiles(dir: string): VmRuntimeLayout {
  const f = VM_RUNTIME_FILES;
  return {
    dir,
    firecrackerSocket: join(dir, f.firecrackerSocket),
    qmpSocket: join(dir, f.qmpSocket),
    agentSocket: join(dir, f.agentSocket),
    vsockSocket: join(dir, f.vsockSocket),
    consoleLog: join(dir, f.consoleLog),
    vmmLog: join(dir, f.vmmLog),
  };
}

export function runtimeLayout(runtimeDir: string): RuntimeLayout {
  const vmsDir = join(runtimeDir, VMS_DIR);
  return {
    runtimeDir,
    orchestratorSocket: join(runtimeDir, "orchestrator.sock"),
    privilegedSocket: join(runtimeDir, "privileged.sock"),
    pullerSocket: join(runtimeDir, "image-puller.sock"),
    vmsDir,
    vm: (vmId) => vmRuntimeFiles(join(vmsDir, vmId)),
  };
}

/** The names inside a VM's state directory `<state>/vms/<id>/`. */
export const VM_STATE_FILES = {
  /** The root disk of a `clone` VM: the owner's copy of the image's root filesystem. */
  rootDisk: "root.ext4",
  /** The copy-on-write store of a `dm-snapshot` VM's root device. */
  rootCow: "root.cow",
  /** The work disk, mounted at /root in the guest. */
  workDisk: "work.ext4",
  /** What is true on the host for a running VM (pid, tap, …), kept across restarts. */
  handles: "handles.json",
  /** Present while a create runs: a VM that has it at start-up was cut off mid-create. */
  creatingMarker: "creating",
  /** A stopped VM's saved state (`vm stop --save`): the VMM's files and saved.json, written last. */
  savedDir: "saved",
} as const;

/** A VM's state directory: its disks and handles. */
export interface VmStateLayout {
  readonly dir: string;
  readonly rootDisk: string;
  readonly rootCow: string;
  readonly workDisk: string;
  readonly handles: string;
  readonly creatingMarker: string;
  readonly savedDir: string;
}

/** The names inside an image's directory (published or staged). */
export const IMAGE_FILES = { rootfs: "rootfs.ext4", workSeed: "work-seed.ext4" } as const;

/** An image's files in `dir`: `images/<name>/` once published, or a staging directory. */
export interface ImageFiles {
  readonly dir: string;
  readonly rootfs: string;
  readonly workSeed: string;
}

export function imageFiles(dir: string): ImageFiles {
  return { dir, rootfs: join(dir, IMAGE_FILES.rootfs), workSeed: join(dir, IMAGE_FILES.workSeed) };
}

/** The names inside a kernel's directory (imported or staged). */
export const KERNEL_FILES = {
  vmlinux: "vmlinux",
  vmlinuz: "vmlinuz",
  initrd: "initrd",
  /** Beside an initrd banger built with its guest kit: what the kit holds (JSON). */
  kitMarker: "initrd.kit.json",
  /** The `lib/modules/<version>` tree. */
  modules: "modules",
} as const;

/** A kernel's files in `dir`: `kernels/<name>/` once imported, or a staging directory. */
export interface KernelDirFiles {
  readonly dir: string;
  /** `vmlinux` when uncompressed, else `vmlinuz`. */
  kernel(uncompressed: boolean): string;
  readonly initrd: string;
  readonly kitMarker: string;
  readonly modules: string;
}

export function kernelDirFiles(dir: string): KernelDirFiles {
  const f = KERNEL_FILES;
  return {
    dir,
    kernel: (uncompressed) => join(dir, uncompressed ? f.vmlinux : f.vmlinuz),
    initrd: join(dir, f.initrd),
    kitMarker: join(dir, f.kitMarker),
    modules: join(dir, f.modules),
  };
}

/** Every path derived from banger's state directory. */
export interface StateLayout {
  readonly stateDir: string;
  /** The orchestrator's SQLite database. */
  readonly database: string;
  /** dev mode only: each service's log. */
  readonly logDir: string;
  logFile(service: string): string;
  readonly imagesDir: string;
  /** Pulls and builds in progress (the puller writes here); cleared at the orchestrator's start. */
  readonly imageStagingDir: string;
  image(name: string): ImageFiles;
  readonly kernelsDir: string;
  readonly kernelStagingDir: string;
  kernel(name: string): KernelDirFiles;
  readonly vmsDir: string;
  vm(vmId: string): VmStateLayout;
  /** The VM id of a path under `<state>/vms/<id>/`, if it is one. */
  vmIdOf(path: string): string | undefined;
  /** Per-VM workspace baselines. */
  readonly workspacesDir: string;
  /** The puller's blob cache (when no cache directory is named) and built-image cache. */
  readonly blobCacheDir: string;
  readonly builtCacheDir: string;
}

export function stateLayout(stateDir: string): StateLayout {
  const logDir = join(stateDir, "logs");
  const imagesDir = join(stateDir, "images");
  const kernelsDir = join(stateDir, "kernels");
  const vmsDir = join(stateDir, VMS_DIR);
  const v = VM_STATE_FILES;
  return {
    stateDir,
    database: join(stateDir, "banger.db"),
    logDir,
    logFile: (service) => join(logDir, `${service}.jsonl`),
    imagesDir,
    imageStagingDir: join(imagesDir, ".staging"),
    image: (name) => imageFiles(join(imagesDir, name)),
    kernelsDir,
    kernelStagingDir: join(kernelsDir, ".staging"),
    kernel: (name) => kernelDirFiles(join(kernelsDir, name)),
    vmsDir,
    vm(vmId) {
      const dir = join(vmsDir, vmId);
      return {
        dir,
        rootDisk: join(dir, v.rootDisk),
        rootCow: join(dir, v.rootCow),
        workDisk: join(dir, v.workDisk),
        handles: join(dir, v.handles),
        creatingMarker: join(dir, v.creatingMarker),
        savedDir: join(dir, v.savedDir),
      };
    },
    vmIdOf: (path) => (path.startsWith(`${vmsDir}/`) ? path.slice(vmsDir.length + 1).split("/")[0] : undefined),
    workspacesDir: join(stateDir, "workspaces"),
    blobCacheDir: join(stateDir, "cache", "blobs"),
    builtCacheDir: join(stateDir, "cache", "built"),
  };
}
