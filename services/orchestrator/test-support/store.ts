/** Fixtures for the store's tests: real SQLite files in a temporary directory. */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BangerError } from "@banger/common";
import type { Kysely } from "kysely";
import { afterEach, beforeEach, expect } from "vitest";
import { openStore, type Store } from "../src/store/database.js";
import type { ImageRecord } from "../src/store/image-repository.js";
import type { KernelRecord } from "../src/store/kernel-repository.js";
import type { Database } from "../src/store/schema.js";
import type { NewVm } from "../src/store/vm-repository.js";

/** A fresh directory per test, removed afterwards; call at describe level. */
export function useTempDir(): () => string {
  let dir: string | undefined;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "banger-store-"));
  });
  afterEach(async () => {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });
  return () => {
    if (dir === undefined) throw new Error("useTempDir: no test is running");
    return dir;
  };
}

/** A store opened on a fresh file per test, closed afterwards. */
export function useStore(): () => Store {
  const dir = useTempDir();
  let store: Store | undefined;
  beforeEach(async () => {
    store = await openStore(join(dir(), "state.db"));
  });
  afterEach(async () => {
    await store?.close();
    store = undefined;
  });
  return () => {
    if (store === undefined) throw new Error("useStore: no test is running");
    return store;
  };
}

export const T0 = new Date("2026-11-23T10:00:00.000Z");

export function at(seconds: number): Date {
  return new Date(T0.getTime() + seconds * 1000);
}

export function kernel(overrides: Partial<KernelRecord> = {}): KernelRecord {
  return {
    name: "debian-6.1",
    version: "6.1.0-27-amd64",
    kernelSha256: `sha256:${"a".repeat(64)}`,
    kernelBytes: 44_000_000,
    uncompressed: true,
    initrdBytes: 30_000_000,
    hasModules: true,
    isDefault: false,
    createdAt: T0,
    ...overrides,
  };
}

export function image(overrides: Partial<ImageRecord> = {}): ImageRecord {
  return {
    name: "debian",
    reference: "docker.io/library/debian:bookworm",
    manifestDigest: `sha256:${"b".repeat(64)}`,
    platform: "linux/amd64",
    rootfsBytes: 1_073_741_824,
    workSeedBytes: 4_194_304,
    defaultKernel: "debian-6.1",
    source: "pulled",
    config: { entrypoint: [], cmd: ["bash"], env: ["PATH=/usr/bin:/bin"], user: "", workingDir: "" },
    createdAt: T0,
    ...overrides,
  };
}

export function vm(overrides: Partial<NewVm> = {}): NewVm {
  return {
    id: "vm-0001",
    name: "box",
    imageName: "debian",
    kernelName: "debian-6.1",
    vcpu: 2,
    memoryMib: 1024,
    workDiskMib: 8192,
    guestIp: "172.30.0.2",
    mac: "06:00:ac:1e:00:02",
    vsockCid: 3,
    nat: true,
    vmm: "firecracker",
    rootDiskStrategy: "dm-snapshot",
    desiredState: "running",
    createdAt: T0,
    ...overrides,
  };
}

/** Every row of every table, to show that a refused write changed nothing. */
export async function snapshot(db: Kysely<Database>): Promise<unknown> {
  return {
    kernels: await db.selectFrom("kernels").selectAll().orderBy("name").execute(),
    images: await db.selectFrom("images").selectAll().orderBy("name").execute(),
    vms: await db.selectFrom("vms").selectAll().orderBy("id").execute(),
    operations: await db.selectFrom("operations").selectAll().orderBy("id").execute(),
    snapshots: await db.selectFrom("snapshots").selectAll().orderBy("name").execute(),
  };
}

/** The rejection of `promise`, which must be an `errorClass` (fails the test otherwise). */
export async function rejectionOf<E extends Error>(
  promise: Promise<unknown>,
  errorClass: abstract new (...args: never[]) => E,
): Promise<E> {
  const error = await promise.then(
    () => expect.fail(`expected a rejection with ${errorClass.name}`),
    (rejected: unknown) => rejected,
  );
  if (!(error instanceof errorClass)) {
    return expect.fail(`expected ${errorClass.name}, got ${error instanceof Error ? error.stack : String(error)}`);
  }
  return error;
}

/**
 * Runs a write that the store must refuse: asserts the typed error and its
 * reason, and that no table changed. Returns the error for further checks.
 */
export async function expectRefused<E extends BangerError>(
  db: Kysely<Database>,
  write: () => Promise<unknown>,
  errorClass: abstract new (...args: never[]) => E,
  reason: string,
): Promise<E> {
  const before = await snapshot(db);
  const error = await rejectionOf(write(), errorClass);
  expect(error.reason).toBe(reason);
  expect(await snapshot(db)).toEqual(before);
  return error;
}
