/**
 * What every part of the workspaces works with: the VMs, where baselines are
 * kept (`<state>/workspaces/<vm id>/`), the per-VM workspace lock, and the
 * watch that ends a transfer with VM_STOPPED when its VM stops under it.
 */
import { createHash, randomBytes } from "node:crypto";
import { readFile, readdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { FailedPreconditionError, NotFoundError, type Logger } from "@banger/common";
import { stateLayout } from "@banger/common/layout";
import type { GuestTarget } from "../guest-exec.js";

export type WorkspaceMode = "copy" | "git";
export type ExportFormat = "patch" | "tar";

/** What workspaces need of the VM lifecycle (VmService has it). */
export interface WorkspaceVms {
  /** The VM now. Errors: VM_NOT_FOUND. */
  get(name: string): Promise<{ readonly id: string; readonly state: string; readonly pid: number }>;
  /** Where to reach a running guest. Errors: VM_NOT_FOUND, VM_NOT_RUNNING. */
  guestTarget(name: string): Promise<GuestTarget>;
  list(): Promise<readonly { readonly id: string }[]>;
}

/** What the host keeps of a prepared workspace (`workspace.json` beside its baseline `repo/`). */
export interface WorkspaceRecord {
  readonly guestPath: string;
  readonly mode: WorkspaceMode;
  readonly hostPath: string;
  readonly commit: string;
  readonly preparedAt: string;
  readonly files: number;
  readonly bytes: number;
}

/** How often a transfer checks that its VM still runs. */
const VM_POLL_MS = 250;

/** A lock per key whose holders run one at a time, in arrival order. */
export interface KeyedLock {
  /** Whether someone holds or waits for `key`. */
  busy(key: string): boolean;
  /** Resolves with the release once it is this caller's turn; waiting ends when `signal` aborts. */
  acquire(key: string, signal: AbortSignal): Promise<() => void>;
}

export interface WorkspaceContext {
  readonly vms: WorkspaceVms;
  readonly logger: Logger;
  readonly now: () => Date;
  /** The owner's home: repositories must be inside it. */
  readonly home: string;
  /** `<state>/workspaces`. */
  readonly root: string;
  /** `<state>/workspaces/<vm id>`. */
  vmRoot(vmId: string): string;
  /** Where the workspace at `guestPath` of a VM keeps its record and baseline. */
  recordDir(vmId: string, guestPath: string): string;
  /** Prepares and exports of one VM run one at a time. */
  readonly lock: KeyedLock;
}

export function createWorkspaceContext(deps: {
  readonly vms: WorkspaceVms;
  readonly stateDir: string;
  readonly home: string;
  readonly logger: Logger;
  readonly now?: () => Date;
}): WorkspaceContext {
  const root = stateLayout(deps.stateDir).workspacesDir;
  const vmRoot = (vmId: string) => join(root, vmId);
  return {
    vms: deps.vms,
    logger: deps.logger,
    now: deps.now ?? (() => new Date()),
    home: deps.home,
    root,
    vmRoot,
    recordDir: (vmId, guestPath) =>
      join(vmRoot(vmId), createHash("sha256").update(guestPath).digest("hex").slice(0, 16)),
    lock: createKeyedLock(),
  };
}

/** A lock per key whose holders run one at a time, in arrival order; waiting can be abandoned. */
export function createKeyedLock(): KeyedLock {
  const tails = new Map<string, Promise<void>>();
  return {
    busy: (key: string) => tails.has(key),
    async acquire(key: string, signal: AbortSignal): Promise<() => void> {
      const previous = tails.get(key) ?? Promise.resolve();
      let open!: () => void;
      const mine = new Promise<void>((resolve) => (open = resolve));
      const tail = previous.then(() => mine);
      tails.set(key, tail);
      const release = () => {
        open();
        if (tails.get(key) === tail) tails.delete(key);
      };
      try {
        await new Promise<void>((resolve, reject) => {
          const onAbort = () => reject(signal.reason as Error);
          if (signal.aborted) return onAbort();
          signal.addEventListener("abort", onAbort, { once: true });
          void previous.then(() => {
            signal.removeEventListener("abort", onAbort);
            resolve();
          });
        });
      } catch (error) {
        // Our turn passes to the next one as soon as it comes.
        void previous.then(release);
        throw error;
      }
      return release;
    },
  };
}

/** A transfer's watch on its VM. */
export interface VmGuard {
  /** Aborts with the call, or when the VM stops. */
  readonly signal: AbortSignal;
  /** The error to report for `error`: VM_STOPPED when the VM stopping caused it. */
  translate(error: unknown): Promise<unknown>;
  stop(): void;
}

/** Aborts when the VM stops, is deleted or restarted; turns a failure it caused into VM_STOPPED. */
export function guardVm(
  ctx: WorkspaceContext,
  name: string,
  vm: { id: string; pid: number },
  parent: AbortSignal,
  doing: string,
): VmGuard {
  const controller = new AbortController();
  const stopped = () => new FailedPreconditionError(`VM ${name} was stopped while ${doing}`, { reason: "VM_STOPPED" });
  const stillRuns = async () => {
    try {
      const current = await ctx.vms.get(name);
      return (
        current.id === vm.id && current.pid === vm.pid && (current.state === "running" || current.state === "starting")
      );
    } catch (error) {
      return !(error instanceof NotFoundError);
    }
  };
  const timer = setInterval(() => {
    void stillRuns().then((runs) => {
      if (!runs && !controller.signal.aborted) controller.abort(stopped());
    });
  }, VM_POLL_MS);
  return {
    signal: AbortSignal.any([parent, controller.signal]),
    async translate(error: unknown): Promise<unknown> {
      if (controller.signal.aborted) return controller.signal.reason;
      if (parent.aborted) return error;
      return (await stillRuns()) ? error : stopped();
    },
    stop: () => clearInterval(timer),
  };
}

export async function readRecord(
  ctx: WorkspaceContext,
  vmId: string,
  guestPath: string,
  vmName: string,
): Promise<WorkspaceRecord> {
  let path = guestPath;
  if (path === "") {
    const last = await readJson<{ guestPath: string }>(join(ctx.vmRoot(vmId), "last.json"));
    if (!last) {
      throw new FailedPreconditionError(`no workspace was prepared on VM ${vmName}`, { reason: "NO_WORKSPACE" });
    }
    path = last.guestPath;
  }
  const record = await readJson<WorkspaceRecord>(join(ctx.recordDir(vmId, path), "workspace.json"));
  if (!record || record.guestPath !== path) {
    throw new FailedPreconditionError(`no workspace was prepared at ${path} on VM ${vmName}`, {
      reason: "NO_WORKSPACE",
    });
  }
  return record;
}

/** Directories of VMs that no longer exist, and staging an interrupted transfer left. */
export async function sweep(ctx: WorkspaceContext, all: boolean): Promise<void> {
  const { root, logger } = ctx;
  const ids = new Set((await ctx.vms.list()).map((vm) => vm.id));
  for (const entry of await readdir(root).catch(() => [])) {
    if (!ids.has(entry)) {
      await rm(join(root, entry), { recursive: true, force: true });
      logger.info({ id: entry }, "removed the workspaces of a VM that no longer exists");
    } else if (all) {
      for (const leftover of await readdir(join(root, entry)).catch(() => [])) {
        if (leftover.startsWith(".")) await rm(join(root, entry, leftover), { recursive: true, force: true });
      }
    }
  }
}

export async function readJson<T>(path: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(path, "utf8")) as T;
  } catch {
    return undefined;
  }
}

export async function writeJsonAtomically(path: string, value: unknown): Promise<void> {
  const temp = `${path}.${randomBytes(4).toString("hex")}.tmp`;
  await writeFile(temp, JSON.stringify(value, null, 2) + "\n", { mode: 0o600 });
  await rename(temp, path);
}
