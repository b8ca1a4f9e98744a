/**
 * Workspaces: a host git repository copied into a guest over SSH as a tar
 * stream, and the guest's changes brought back as a patch (or a tar).
 *
 * Where the work happens: the orchestrator (running as the owner) reads the
 * repository at the path it is given, packs the files and streams the tar
 * into the guest's stdin; the guest only unpacks it. Each prepare records a
 * baseline on the host, under `<state>/workspaces/<vm id>/`: a git directory
 * holding one commit of exactly what was copied. An export streams the
 * guest's tree back (without `.git`) and diffs it against that baseline on
 * the host. So the guest needs only `sh`, `tar`, `mkdir`, `mv` and `rm`
 * (busybox's are enough) and never `git`: in COPY mode the guest's `.git` is
 * the baseline repository itself, in GIT mode it is the host repository's
 * `.git` as it is (git is needed in the guest only to use it there).
 *
 * Locks: a workspace lock per VM (prepares and exports of one VM run one at a
 * time) that is not the lifecycle lock, so StopVm and DeleteVm never wait for
 * a slow transfer. A transfer watches its VM instead: when the VM stops, is
 * deleted or restarted under it, it ends with VM_STOPPED. The guest's
 * previous workspace stays as it was until a transfer is complete: the new
 * tree is unpacked beside it (`.<name>.banger-new`) and swapped in by a
 * second command only once the host has seen the unpacking succeed.
 */
import { basename, posix } from "node:path";
import { InvalidArgumentError, type Logger } from "@banger/common";
import type { OperationRecord } from "../store/index.js";
import type { Operations } from "./operations.js";
import { validVmName } from "./vms.js";
import { findRepository, listRepositoryFiles } from "./workspace-git.js";
import {
  createWorkspaceContext,
  readRecord,
  sweep,
  type ExportFormat,
  type WorkspaceMode,
  type WorkspaceVms,
} from "./workspace/context.js";
import { exported } from "./workspace/export.js";
import { gitDirToCopy, hostDirectory, insideHome } from "./workspace/host-tree.js";
import { runPrepare } from "./workspace/prepare.js";

export type { ExportFormat, WorkspaceMode, WorkspaceVms } from "./workspace/context.js";

export interface PrepareRequest {
  readonly vm: string;
  /** Absolute host path inside the owner's home: the repository's top level or any directory in it. */
  readonly hostPath: string;
  /** Absolute, normalised guest path; "" = /root/<repository directory name>. */
  readonly guestPath: string;
  readonly mode: WorkspaceMode;
}

export interface ExportRequest {
  readonly vm: string;
  /** "" = the workspace last prepared on this VM. */
  readonly guestPath: string;
  readonly format: ExportFormat;
}

export interface Workspaces {
  /**
   * Checks the request (INVALID_PATH, INVALID_GUEST_PATH, NOT_A_GIT_REPOSITORY,
   * PATH_OUTSIDE_HOME, SUBMODULES_UNSUPPORTED, VM_NOT_FOUND, VM_NOT_RUNNING),
   * then starts the prepare operation (stages scan, baseline, upload) and
   * returns it. It fails with VM_STOPPED when the VM stops under it.
   */
  prepare(req: PrepareRequest): Promise<OperationRecord>;
  /**
   * Checks the request (VM_NOT_FOUND, NO_WORKSPACE, VM_NOT_RUNNING) and returns
   * the export's bytes: a patch against what was prepared (empty: no
   * changes) or a tar of the workspace without `.git`.
   */
  export(req: ExportRequest, signal: AbortSignal): Promise<AsyncIterable<Buffer>>;
  /** At start-up: removes what earlier runs left (baselines of deleted VMs, unfinished staging). */
  recover(): Promise<void>;
}
const GUEST_PATH_MAX = 1024;

/** Guest paths a workspace may not replace: the root, top-level directories, /root itself and banger's SSH access. */
export function validGuestPath(path: string): string {
  const refuse = (why: string) =>
    new InvalidArgumentError(`guest path ${JSON.stringify(path)} ${why}`, { reason: "INVALID_GUEST_PATH" });
  if (!path.startsWith("/")) throw refuse("is not absolute");
  if (path.length > GUEST_PATH_MAX) throw refuse(`is longer than ${GUEST_PATH_MAX} bytes`);
  if (/[\x00-\x1f\x7f]/.test(path)) throw refuse("holds control characters");
  if (posix.normalize(path) !== path || path.endsWith("/"))
    throw refuse("is not normalised (no //, ., .. or trailing /)");
  if (path.split("/").length < 3)
    throw refuse("is a top-level directory; give a directory inside one, e.g. /root/repo");
  if (path === "/root/.ssh" || path.startsWith("/root/.ssh/")) throw refuse("would replace banger's SSH access");
  return path;
}

/** Where a repository goes when no guest path is given: /root/<its directory name>. */
export function defaultGuestPath(top: string): string {
  return validGuestPath(`/root/${basename(top)}`);
}

export function createWorkspaces(deps: {
  readonly vms: WorkspaceVms;
  readonly operations: Operations;
  readonly stateDir: string;
  /** The owner's home: repositories must be inside it. */
  readonly home: string;
  readonly logger: Logger;
  readonly now?: () => Date;
}): Workspaces {
  const { vms, operations } = deps;
  const ctx = createWorkspaceContext(deps);
  return {
    async prepare(req) {
      const name = validVmName(req.vm);
      if (req.guestPath !== "") validGuestPath(req.guestPath);
      const hostPath = await hostDirectory(deps.home, req.hostPath);
      const signal = AbortSignal.timeout(120_000);
      const repo = await findRepository(hostPath, signal);
      await insideHome(deps.home, repo.top, `the repository ${repo.top}`);
      if (req.mode === "git") await gitDirToCopy(repo);
      const guestPath = req.guestPath || defaultGuestPath(repo.top);
      const vm = await vms.get(name);
      await vms.guestTarget(name); // VM_NOT_RUNNING before anything starts
      const paths = await listRepositoryFiles(repo.top, signal);
      return operations.start("prepare-workspace", name, (op) =>
        runPrepare(ctx, op, name, vm, repo, paths, guestPath, req.mode),
      );
    },

    async export(req, signal) {
      const name = validVmName(req.vm);
      if (req.guestPath !== "") validGuestPath(req.guestPath);
      const vm = await vms.get(name);
      const record = await readRecord(ctx, vm.id, req.guestPath, name);
      const target = await vms.guestTarget(name);
      return exported(ctx, name, vm, target, record, req.format, signal);
    },

    async recover() {
      await sweep(ctx, true);
    },
  };
}
