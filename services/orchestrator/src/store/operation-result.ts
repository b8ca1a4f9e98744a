/**
 * What a succeeded operation produced, as a domain record of its kind (the
 * VM, image or kernel as the operation left it), stored as plain JSON in
 * `operations.result`. The wire form is the rpc edge's business alone.
 */
import {
  booleanField,
  corrupt,
  fromNullableTimestamp,
  fromTimestamp,
  type JsonObject,
  nullableStringField,
  numberField,
  objectField,
  oneOf,
  parseJsonObject,
  stringArrayField,
  stringField,
  toTimestamp,
} from "./columns.js";
import { IMAGE_SOURCES, imageConfigFromJson, imageConfigToJson, type ImageRecord } from "./image-repository.js";
import type { KernelRecord } from "./kernel-repository.js";
import { ROOT_DISK_STRATEGIES, VMM_KINDS, type VmRecord } from "./vm-repository.js";

export const VM_STATES = ["creating", "starting", "running", "stopping", "stopped", "failed", "deleting"] as const;
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

/** What a succeeded operation produced; operations that produce nothing have none (null). */
export type OperationResult =
  | { readonly kind: "vm"; readonly vm: VmSnapshot }
  | { readonly kind: "image"; readonly image: ImageRecord }
  | { readonly kind: "kernel"; readonly kernel: KernelSnapshot };

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
      return { kind: "vm", vm: vmToJson(result.vm) };
    case "image":
      return { kind: "image", image: imageToJson(result.image) };
    case "kernel":
      return { kind: "kernel", kernel: kernelToJson(result.kernel) };
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
      return { kind, vm: vmFromJson(objectField(json, "vm", where), `${where}.vm`) };
    case "image":
      return { kind, image: imageFromJson(objectField(json, "image", where), `${where}.image`) };
    case "kernel":
      return { kind, kernel: kernelFromJson(objectField(json, "kernel", where), `${where}.kernel`) };
    default:
      throw corrupt(where, `unknown result kind ${JSON.stringify(kind ?? null)}`);
  }
}

function vmToJson(vm: VmSnapshot): JsonObject {
  return {
    id: vm.id,
    name: vm.name,
    imageName: vm.imageName,
    kernelName: vm.kernelName,
    vcpu: vm.vcpu,
    memoryMib: vm.memoryMib,
    workDiskMib: vm.workDiskMib,
    guestIp: vm.guestIp,
    mac: vm.mac,
    vsockCid: vm.vsockCid,
    nat: vm.nat,
    vmm: vm.vmm,
    rootDiskStrategy: vm.rootDiskStrategy,
    lastError: vm.lastError,
    pendingChanges: vm.pendingChanges,
    createdAt: toTimestamp(vm.createdAt),
    startedAt: vm.startedAt && toTimestamp(vm.startedAt),
    state: vm.state,
    pid: vm.pid,
    agentHealth: vm.agentHealth,
    agentVersion: vm.agentVersion,
  };
}

function vmFromJson(json: JsonObject, where: string): VmSnapshot {
  return {
    id: stringField(json, "id", where),
    name: stringField(json, "name", where),
    imageName: stringField(json, "imageName", where),
    kernelName: stringField(json, "kernelName", where),
    vcpu: numberField(json, "vcpu", where),
    memoryMib: numberField(json, "memoryMib", where),
    workDiskMib: numberField(json, "workDiskMib", where),
    guestIp: stringField(json, "guestIp", where),
    mac: stringField(json, "mac", where),
    vsockCid: numberField(json, "vsockCid", where),
    nat: booleanField(json, "nat", where),
    vmm: oneOf(VMM_KINDS, stringField(json, "vmm", where), where),
    rootDiskStrategy: oneOf(ROOT_DISK_STRATEGIES, stringField(json, "rootDiskStrategy", where), where),
    lastError: nullableStringField(json, "lastError", where),
    pendingChanges: objectField(json, "pendingChanges", where),
    createdAt: fromTimestamp(stringField(json, "createdAt", where), where),
    startedAt: fromNullableTimestamp(nullableStringField(json, "startedAt", where), where),
    state: oneOf(VM_STATES, stringField(json, "state", where), where),
    pid: numberField(json, "pid", where),
    agentHealth: oneOf(AGENT_HEALTHS, stringField(json, "agentHealth", where), where),
    agentVersion: stringField(json, "agentVersion", where),
  };
}

function imageToJson(image: ImageRecord): JsonObject {
  return {
    name: image.name,
    reference: image.reference,
    manifestDigest: image.manifestDigest,
    platform: image.platform,
    rootfsBytes: image.rootfsBytes,
    workSeedBytes: image.workSeedBytes,
    defaultKernel: image.defaultKernel,
    source: image.source,
    config: imageConfigToJson(image.config),
    createdAt: toTimestamp(image.createdAt),
  };
}

function imageFromJson(json: JsonObject, where: string): ImageRecord {
  return {
    name: stringField(json, "name", where),
    reference: nullableStringField(json, "reference", where),
    manifestDigest: nullableStringField(json, "manifestDigest", where),
    platform: stringField(json, "platform", where),
    rootfsBytes: numberField(json, "rootfsBytes", where),
    workSeedBytes: numberField(json, "workSeedBytes", where),
    defaultKernel: nullableStringField(json, "defaultKernel", where),
    source: oneOf(IMAGE_SOURCES, stringField(json, "source", where), where),
    config: imageConfigFromJson(objectField(json, "config", where), `${where}.config`),
    createdAt: fromTimestamp(stringField(json, "createdAt", where), where),
  };
}

function kernelToJson(kernel: KernelSnapshot): JsonObject {
  return {
    name: kernel.name,
    version: kernel.version,
    kernelSha256: kernel.kernelSha256,
    kernelBytes: kernel.kernelBytes,
    uncompressed: kernel.uncompressed,
    initrdBytes: kernel.initrdBytes,
    hasModules: kernel.hasModules,
    isDefault: kernel.isDefault,
    createdAt: toTimestamp(kernel.createdAt),
    usedBy: [...kernel.usedBy],
  };
}

function kernelFromJson(json: JsonObject, where: string): KernelSnapshot {
  return {
    name: stringField(json, "name", where),
    version: stringField(json, "version", where),
    kernelSha256: stringField(json, "kernelSha256", where),
    kernelBytes: numberField(json, "kernelBytes", where),
    uncompressed: booleanField(json, "uncompressed", where),
    initrdBytes: numberField(json, "initrdBytes", where),
    hasModules: booleanField(json, "hasModules", where),
    isDefault: booleanField(json, "isDefault", where),
    createdAt: fromTimestamp(stringField(json, "createdAt", where), where),
    usedBy: stringArrayField(json, "usedBy", where),
  };
}
