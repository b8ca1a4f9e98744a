/**
 * What a pull and the built-in image share: the staging directory the
 * orchestrator names (checked, emptied on failure), the names of the files
 * made in it, and the stage events around each step.
 */
import { mkdir, readdir, rm } from "node:fs/promises";
import { isAbsolute, join, normalize } from "node:path";
import { FailedPreconditionError, InvalidArgumentError, PermissionDeniedError } from "@banger/common/errors";

export type PullStageName = "resolve" | "layers" | "mkfs" | "ownership" | "work-seed" | "verify";

export interface StageEvent {
  readonly kind: "stage";
  readonly stage: PullStageName;
  readonly done: boolean;
  readonly durationMs: number;
  readonly message: string;
}

export const ROOTFS_FILE = "rootfs.ext4";
export const WORK_SEED_FILE = "work-seed.ext4";

/** The staging directory must be an absolute, normalised path strictly inside the state directory, and empty. */
export async function prepareStaging(stateDir: string, stagingDir: string): Promise<void> {
  if (!isAbsolute(stagingDir) || normalize(stagingDir) !== stagingDir || stagingDir.endsWith("/")) {
    throw new InvalidArgumentError("staging_dir must be an absolute, normalised path", {
      reason: "INVALID_STAGING_DIR",
    });
  }
  if (!stagingDir.startsWith(`${stateDir}/`)) {
    throw new PermissionDeniedError(`staging_dir must be inside banger's state directory ${stateDir}`, {
      reason: "STAGING_OUTSIDE_STATE_DIR",
    });
  }
  await mkdir(stagingDir, { recursive: true, mode: 0o700 });
  if ((await readdir(stagingDir)).length > 0) {
    throw new FailedPreconditionError(`staging_dir ${stagingDir} is not empty`, { reason: "STAGING_NOT_EMPTY" });
  }
}

/** Nothing half-done stays in the staging directory (the directory itself is the orchestrator's). */
export async function emptyStaging(stagingDir: string): Promise<void> {
  for (const entry of await readdir(stagingDir).catch(() => [])) {
    await rm(join(stagingDir, entry), { recursive: true, force: true });
  }
}

/** Runs a stage's work between its start and done events, the done one with its duration and `message`. */
export function stageTimer(emit: (event: StageEvent) => void) {
  return async <T>(stage: PullStageName, work: () => Promise<T>, message = ""): Promise<T> => {
    const t0 = performance.now();
    emit({ kind: "stage", stage, done: false, durationMs: 0, message: "" });
    const value = await work();
    emit({ kind: "stage", stage, done: true, durationMs: Math.round(performance.now() - t0), message });
    return value;
  };
}

/** The builder's own stages (mkfs, ownership) as stage events, the done one with its duration. */
export function builderStages(emit: (event: StageEvent) => void): (stage: "mkfs" | "ownership", done: boolean) => void {
  const t0 = new Map<string, number>();
  return (stage, done) => {
    if (!done) t0.set(stage, performance.now());
    const durationMs = done ? Math.round(performance.now() - (t0.get(stage) ?? 0)) : 0;
    emit({ kind: "stage", stage, done, durationMs, message: "" });
  };
}
