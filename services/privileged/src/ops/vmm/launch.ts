/**
 * LaunchVmm: every field checked before anything happens, the VM's runtime directory made and
 * handed to the owner through open directories (host/dirfd.ts), the log relays and then the VMM
 * started detached as the owner with pipes for stdout and stderr, and the launch answered once the
 * VMM's control socket exists.
 */
import { closeSync, fchownSync, openSync } from "node:fs";
import { lstat, type FileHandle } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { DeadlineExceededError, FailedPreconditionError, InvalidArgumentError } from "@banger/common/errors";
import { checkSocketPathLength } from "@banger/common/socket-path";
import type { HelperConfig } from "../../config.js";
import {
  at,
  checkRootsDir,
  clearSocketPath,
  errnoOf,
  logTail,
  openOrMakeDir,
  openRuntimeDir,
} from "../../host/dirfd.js";
import { nonBlockingWriterPipe } from "../../host/pipe.js";
import { readStat, type DetachedProcess, type SpawnDetached } from "../../host/proc.js";
import { validVmId } from "../../validate/ids.js";
import { MAX_BOOT_ARGS_BYTES, validKind, validLogMaxBytes, validQemuMachine } from "../../validate/vmm.js";
import { firecrackerArgv, kernelCommandLine, qemuArgv } from "./argv.js";
import type { VmmProcesses } from "./processes.js";
import { RELAY_BUSYBOX, relayArgv } from "./relay.js";
import {
  CONSOLE_LOG,
  VMM_LOG,
  controlSocketName,
  controlSocketOf,
  vmRuntimePaths,
  type VmRuntimePaths,
} from "./runtime-paths.js";
import type { LaunchRequest, LaunchResult, VmmKind } from "./types.js";

const VMM_ENV = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" } as const;

export interface LaunchDeps {
  readonly config: HelperConfig;
  readonly procRoot: string;
  readonly spawnProcess: SpawnDetached;
  readonly kvmUsable: () => boolean;
  readonly hostTscKhz: () => number | undefined;
  readonly readyTimeoutMs: number;
  readonly processes: VmmProcesses;
  /** VMs whose launch is under way in this helper (between the running check and the spawn). */
  readonly launching: Set<string>;
}

/** A launch checked completely: what it will start, and where. */
interface LaunchPlan {
  readonly vmId: string;
  readonly kind: VmmKind;
  readonly paths: VmRuntimePaths;
  readonly controlSocket: string;
  readonly logMaxBytes: number;
  readonly argv: string[];
}

type Owner = { readonly uid: number; readonly gid: number };

/** Everything is checked before anything happens. */
function planLaunch(deps: LaunchDeps, req: LaunchRequest): LaunchPlan {
  const { config, kvmUsable, hostTscKhz } = deps;
  const vmId = validVmId(req.vmId);
  const kind = validKind(req.kind);
  const paths = vmRuntimePaths(config.runtimeDir, vmId);
  const controlSocket = controlSocketOf(paths, kind);
  checkSocketPathLength(controlSocket);
  const logMaxBytes = validLogMaxBytes(req.logMaxBytes);
  let argv: string[];
  if (kind === "firecracker") {
    argv = firecrackerArgv(config, vmId);
  } else {
    const machine = validQemuMachine(config.stateDir, vmId, req.qemu);
    const tscKhz = machine.kvm ? undefined : machine.tscKhz === 0 ? hostTscKhz() : machine.tscKhz;
    if (Buffer.byteLength(kernelCommandLine(machine, tscKhz)) > MAX_BOOT_ARGS_BYTES) {
      throw new InvalidArgumentError(`qemu.boot_args with tsc_early_khz appended exceed ${MAX_BOOT_ARGS_BYTES} bytes`, {
        reason: "INVALID_BOOT_ARGS",
      });
    }
    if (paths.dir.includes(",")) {
      throw new FailedPreconditionError(`runtime directory ${config.runtimeDir} contains ",", which QEMU cannot take`, {
        reason: "RUNTIME_DIR_UNSUPPORTED",
      });
    }
    if (machine.kvm && !kvmUsable()) {
      throw new FailedPreconditionError("/dev/kvm is not usable on this host; ask for TCG (kvm = false)", {
        reason: "KVM_ABSENT",
      });
    }
    argv = qemuArgv(config, vmId, machine, tscKhz);
  }
  if (config.ownerUid === 0 || config.ownerGid === 0) {
    throw new FailedPreconditionError("the helper's owner is root; a VMM never runs as root", {
      reason: "OWNER_IS_ROOT",
    });
  }
  return { vmId, kind, paths, controlSocket, logMaxBytes, argv };
}

/** Opens `<runtime>/vms/<vm_id>`, making it and handing it to the owner when needed; every handle goes to `keep`. */
async function openVmDir(
  config: HelperConfig,
  plan: LaunchPlan,
  owner: Owner,
  keep: <T extends FileHandle>(handle: T) => T,
): Promise<FileHandle> {
  const { paths, vmId } = plan;
  const runtime = keep(await openRuntimeDir(config.runtimeDir));
  const vms = await openOrMakeDir(runtime, "vms", 0o711, paths.vmsDir);
  keep(vms.dir);
  if (vms.made) await vms.dir.chmod(0o711); // whatever the umask: the owner must reach its VM's directory
  await checkRootsDir(vms.dir, paths.vmsDir);
  const vm = keep((await openOrMakeDir(vms.dir, vmId, 0o700, paths.dir)).dir);
  // The owner's, group root, 0770: the VMM (the owner) and the helper (gid 0) both work in it, and
  // the installed helper needs no CAP_DAC_OVERRIDE or CAP_FOWNER for that. Mode first, while root
  // still owns it (without CAP_FOWNER it cannot chmod the owner's). One already handed over (an
  // earlier launch) must be exactly that.
  const before = await vm.stat();
  if (before.uid === 0) {
    await vm.chmod(0o770);
    await vm.chown(owner.uid, 0);
  } else if (before.uid !== owner.uid || before.gid !== 0 || (before.mode & 0o777) !== 0o770) {
    throw new FailedPreconditionError(`${paths.dir} is not the owner's directory (group root, 0770)`, {
      reason: "RUNTIME_DIR_UNSAFE",
    });
  }
  return vm;
}

/** Starts a relay per log, then the VMM writing into their pipes, all as the owner. */
async function startWithRelays(
  spawnProcess: SpawnDetached,
  plan: LaunchPlan,
  owner: Owner,
): Promise<{ child: DetachedProcess; relays: DetachedProcess[] }> {
  const { vmId, paths, argv, logMaxBytes } = plan;
  const pipes: number[] = [];
  const closePipes = () => pipes.splice(0).forEach((fd) => closeSync(fd));
  let child: DetachedProcess;
  let relays: DetachedProcess[];
  try {
    const consolePipe = nonBlockingWriterPipe();
    pipes.push(consolePipe.read, consolePipe.write);
    const logPipe = nonBlockingWriterPipe();
    pipes.push(logPipe.read, logPipe.write);
    // A pipe is its maker's, 0600: the owner's, so the VMM can open its stderr by path (Firecracker's log).
    fchownSync(consolePipe.write, owner.uid, owner.gid);
    fchownSync(logPipe.write, owner.uid, owner.gid);
    const devNull = openSync("/dev/null", "w");
    pipes.push(devNull);
    relays = [];
    for (const [file, pipe] of [
      [CONSOLE_LOG, consolePipe],
      [VMM_LOG, logPipe],
    ] as const) {
      try {
        relays.push(
          await spawnProcess({
            argv: relayArgv(vmId, file, logMaxBytes),
            uid: owner.uid,
            gid: owner.gid,
            cwd: paths.dir,
            stdin: pipe.read,
            stdout: devNull,
            stderr: devNull,
            env: VMM_ENV,
          }),
        );
      } catch (error) {
        throw new FailedPreconditionError(
          `cannot start the log relay (${RELAY_BUSYBOX}; install busybox-static): ${(error as Error).message}`,
          { reason: "LOG_RELAY_UNUSABLE", cause: error },
        );
      }
    }
    try {
      child = await spawnProcess({
        argv,
        uid: owner.uid,
        gid: owner.gid,
        cwd: paths.dir,
        stdout: consolePipe.write,
        stderr: logPipe.write,
        env: VMM_ENV,
      });
    } catch (error) {
      throw new FailedPreconditionError(`cannot start ${argv[0]}: ${(error as Error).message}`, {
        reason: "VMM_BINARY_UNUSABLE",
        cause: error,
      });
    }
  } finally {
    // The relays end when the VMM's ends close (its exit), or at once when it never started.
    closePipes();
  }
  return { child, relays };
}

async function waitForSocket(
  readyTimeoutMs: number,
  vmDir: FileHandle,
  name: string,
  child: DetachedProcess,
  tails: () => Promise<string>,
): Promise<void> {
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  void child.exited.then((result) => (exited = result));
  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    try {
      if ((await lstat(at(vmDir, name))).isSocket()) return;
    } catch (error) {
      if (errnoOf(error) !== "ENOENT") throw error;
    }
    if (exited) {
      const how = exited.signal ?? `code ${exited.code}`;
      const tail = await tails();
      throw new FailedPreconditionError(
        `the VMM exited (${how}) before it opened its socket${tail ? `: ${tail}` : ""}`,
        {
          reason: "VMM_EXITED",
        },
      );
    }
    if (Date.now() > deadline) {
      // Still our unreaped child (no exit seen), so the pid is certainly the one we started.
      try {
        process.kill(child.pid, "SIGKILL");
      } catch {
        // already gone
      }
      throw new DeadlineExceededError(`the VMM did not open its socket within ${readyTimeoutMs} ms`, {
        reason: "VMM_NOT_READY",
      });
    }
    await sleep(20);
  }
}

/** LaunchVmm. */
export async function launchVmm(deps: LaunchDeps, req: LaunchRequest): Promise<LaunchResult> {
  const { config, procRoot, processes, launching } = deps;
  const plan = planLaunch(deps, req);
  const { vmId, kind, paths, controlSocket } = plan;

  if (launching.has(vmId)) {
    throw new FailedPreconditionError(`a VMM for ${vmId} is being launched`, { reason: "VMM_RUNNING" });
  }
  launching.add(vmId);
  const handles: FileHandle[] = [];
  const keep = <T extends FileHandle>(handle: T): T => {
    handles.push(handle);
    return handle;
  };
  try {
    const running = (await processes.list()).find((p) => p.vmId === vmId);
    if (running) {
      throw new FailedPreconditionError(`VM ${vmId} already has a running VMM (pid ${running.pid})`, {
        reason: "VMM_RUNNING",
      });
    }

    const owner = { uid: config.ownerUid, gid: config.ownerGid };
    const vm = await openVmDir(config, plan, owner, keep);
    const socketName = controlSocketName(kind);
    await clearSocketPath(vm, socketName, controlSocket);
    // The VMM writes into pipes; a relay per log, as the owner, keeps the newest output in files.
    await processes.stopRelays(vmId);
    const { child, relays } = await startWithRelays(deps.spawnProcess, plan, owner);
    const stat = await readStat(child.pid, procRoot);
    const tails = async () => {
      // What the VMM printed before it exited is in the files once its relays have written it.
      await Promise.race([Promise.all(relays.map((r) => r.exited)), sleep(2000)]);
      return [await logTail(vm, CONSOLE_LOG, owner.uid), await logTail(vm, VMM_LOG, owner.uid)]
        .filter(Boolean)
        .join("\n");
    };
    if (!stat) {
      throw new FailedPreconditionError(`the VMM exited at once: ${await tails()}`, { reason: "VMM_EXITED" });
    }
    await waitForSocket(deps.readyTimeoutMs, vm, socketName, child, tails);
    return {
      pid: child.pid,
      startTime: stat.startTime,
      controlSocket,
      logPath: paths.vmmLog,
      consolePath: paths.consoleLog,
    };
  } finally {
    launching.delete(vmId);
    await Promise.all(handles.reverse().map((h) => h.close()));
  }
}
