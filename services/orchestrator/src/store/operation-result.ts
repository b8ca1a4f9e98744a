/**
 * What a succeeded operation produced, as a domain record of its kind (the
 * VM, image or kernel as the operation left it), stored as plain JSON in
 * `operations.result`. The wire form is the rpc edge's business alone.
 */
import { corrupt, type JsonObject, objectField, parseJsonObject } from "./columns.js";
import { IMAGE_SOURCES, imageConfigFromJson, imageConfigToJson, type ImageRecord } from "./image-repository.js";
import type { KernelRecord } from "./kernel-repository.js";
import type { SnapshotRecord } from "./snapshot-repository.js";
import {
  choice,
  type FieldCodec,
  flag,
  nullableText,
  nullableTimestamp,
  number,
  object,
  readRecord,
  type RecordCodec,
  text,
  texts,
  timestamp,
  writeRecord,
} from "./record-codec.js";
import {
  ROOT_DISK_STRATEGIES,
  VMM_KINDS,
  publishedPortsFromJson,
  publishedPortsToJson,
  type PublishedPort,
  type VmRecord,
} from "./vm-repository.js";

/** A VM's published ports; a result stored before there were any has none. */
const publishedPorts: FieldCodec<readonly PublishedPort[]> = {
  write: publishedPortsToJson,
  read: (json, key, where) => (json[key] === undefined ? [] : publishedPortsFromJson(json[key], `${where}.${key}`)),
};

export const VM_STATES = [
  "creating",
  "starting",
  "running",
  "stopping",
  "stopped",
  "failed",
  "deleting",
  "paused",
] as const;
export type VmStateName = (typeof VM_STATES)[number];

/** Whether a VM's guest agent answers: "" when it is not running. */
export const AGENT_HEALTHS = ["", "ok", "unreachable", "none"] as const;
export type AgentHealthName = (typeof AGENT_HEALTHS)[number];

/** A VM as an operation left it: its record (less what only the store uses), state, VMM pid and agent. */
export interface VmSnapshot extends Omit<VmRecord, "desiredState" | "updatedAt"> {
  readonly state: VmStateName;
  /** 0 when no VMM runs. */
  readonly pid: number;
  readonly agentHealth: AgentHealthName;
  /** qemu-ga's version when it answered; "" else. */
  readonly agentVersion: string;
}

/** A kernel with the images and VMs that used it then ("image:<name>"…, "vm:<name>"…). */
export interface KernelSnapshot extends KernelRecord {
  readonly usedBy: readonly string[];
}

/** A snapshot of a VM with the bytes its files took then. */
export interface SnapshotView extends SnapshotRecord {
  readonly allocatedBytes: number;
}

/** What a succeeded operation produced; operations that produce nothing have none (null). */
export type OperationResult =
  | { readonly kind: "vm"; readonly vm: VmSnapshot }
  | { readonly kind: "image"; readonly image: ImageRecord }
  | { readonly kind: "kernel"; readonly kernel: KernelSnapshot }
  | { readonly kind: "snapshot"; readonly snapshot: SnapshotView };

/**
 * A stored result this code cannot read (a hand-edited row, a result from a
 * version that had kinds this one does not): the operation stays readable, with
 * no result and this note of why.
 */
export interface UnreadableResult {
  readonly kind: "unreadable";
  readonly detail: string;
}

export function resultToJson(result: OperationResult): JsonObject {
  switch (result.kind) {
    case "vm":
      return { kind: "vm", vm: writeRecord(VM_CODEC, result.vm) };
    case "image":
      return { kind: "image", image: writeRecord(IMAGE_CODEC, result.image) };
    case "kernel":
      return { kind: "kernel", kernel: writeRecord(KERNEL_CODEC, result.kernel) };
    case "snapshot":
      return { kind: "snapshot", snapshot: writeRecord(SNAPSHOT_CODEC, result.snapshot) };
  }
}

/** The stored result `text`, or an UnreadableResult saying why it is not one. */
export function resultFromText(text: string, where: string): OperationResult | UnreadableResult {
  try {
    return resultFromJson(parseJsonObject(text, where), where);
  } catch (error) {
    return { kind: "unreadable", detail: error instanceof Error ? error.message : String(error) };
  }
}

function resultFromJson(json: JsonObject, where: string): OperationResult {
  const kind = json["kind"];
  switch (kind) {
    case "vm":
      return { kind, vm: readRecord(VM_CODEC, objectField(json, "vm", where), `${where}.vm`) };
    case "image":
      return { kind, image: readRecord(IMAGE_CODEC, objectField(json, "image", where), `${where}.image`) };
    case "kernel":
      return { kind, kernel: readRecord(KERNEL_CODEC, objectField(json, "kernel", where), `${where}.kernel`) };
    case "snapshot":
      return {
        kind,
        snapshot: readRecord(SNAPSHOT_CODEC, objectField(json, "snapshot", where), `${where}.snapshot`),
      };
    default:
      throw corrupt(where, `unknown result kind ${JSON.stringify(kind ?? null)}`);
  }
}

const VM_CODEC: RecordCodec<VmSnapshot> = {
  id: text,
  name: text,
  imageName: text,
  kernelName: text,
  vcpu: number,
  memoryMib: number,
  workDiskMib: number,
  guestIp: text,
  mac: text,
  vsockCid: number,
  nat: flag,
  vmm: choice(VMM_KINDS),
  rootDiskStrategy: choice(ROOT_DISK_STRATEGIES),
  lastError: nullableText,
  pendingChanges: object,
  createdAt: timestamp,
  startedAt: nullableTimestamp,
  state: choice(VM_STATES),
  pid: number,
  agentHealth: choice(AGENT_HEALTHS),
  agentVersion: text,
  publishedPorts,
};

const IMAGE_CODEC: RecordCodec<ImageRecord> = {
  name: text,
  reference: nullableText,
  manifestDigest: nullableText,
  platform: text,
  rootfsBytes: number,
  workSeedBytes: number,
  defaultKernel: nullableText,
  source: choice(IMAGE_SOURCES),
  config: {
    write: imageConfigToJson,
    read: (json, key, where) => imageConfigFromJson(objectField(json, key, where), `${where}.${key}`),
  },
  createdAt: timestamp,
};

const KERNEL_CODEC: RecordCodec<KernelSnapshot> = {
  name: text,
  version: text,
  kernelSha256: text,
  kernelBytes: number,
  uncompressed: flag,
  initrdBytes: number,
  hasModules: flag,
  isDefault: flag,
  createdAt: timestamp,
  usedBy: texts,
};

const SNAPSHOT_CODEC: RecordCodec<SnapshotView> = {
  name: text,
  vmName: text,
  vmId: text,
  imageName: text,
  kernelName: text,
  vmm: choice(VMM_KINDS),
  vcpu: number,
  memoryMib: number,
  workDiskMib: number,
  rootDiskStrategy: choice(ROOT_DISK_STRATEGIES),
  mac: text,
  createdAt: timestamp,
  allocatedBytes: number,
};
