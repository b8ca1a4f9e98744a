/**
 * `operations.result` held the wire form (proto JSON) of what an operation
 * produced: `{"vm": {"state": "VM_STATE_RUNNING", "workDiskMib": "8192", …}}`,
 * `{"image": {…}}`, `{"kernel": {…}}`. It now holds the domain record, tagged:
 * `{"kind": "vm", "vm": {"state": "running", "workDiskMib": 8192, …}}` (see
 * operation-result.ts). This rewrites every stored result of the old form.
 *
 * A result that is not of the old form (not JSON, another shape, a value
 * outside its enum) is left as it is: the store reads it as unreadable and the
 * operation stays readable without it; one odd row never stops the upgrade.
 * The conversion is spelled out here, frozen: later changes to the codec do
 * not change what this migration did.
 */
import type { Kysely } from "kysely";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

interface Rows {
  operations: { id: string; result: string | null };
}

export async function up(db: Kysely<unknown>): Promise<void> {
  const typed = db as unknown as Kysely<Rows>;
  const rows = await typed.selectFrom("operations").select(["id", "result"]).where("result", "is not", null).execute();
  for (const row of rows) {
    const converted = row.result === null ? undefined : fromProtoJson(row.result);
    if (converted === undefined) continue;
    await typed
      .updateTable("operations")
      .set({ result: JSON.stringify(converted) })
      .where("id", "=", row.id)
      .execute();
  }
}

/** The domain form of an old result, or undefined when it is not one. */
export function fromProtoJson(text: string): JsonObject | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isObject(parsed) || parsed["kind"] !== undefined) return undefined;
  try {
    if (isObject(parsed["vm"])) return { kind: "vm", vm: vmFrom(parsed["vm"]) };
    if (isObject(parsed["image"])) return { kind: "image", image: imageFrom(parsed["image"]) };
    if (isObject(parsed["kernel"])) return { kind: "kernel", kernel: kernelFrom(parsed["kernel"]) };
  } catch (error) {
    if (error instanceof NotOldForm) return undefined;
    throw error;
  }
  return undefined;
}

class NotOldForm extends Error {}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// Proto JSON leaves out fields at their defaults: an absent field is its zero value.
function str(o: JsonObject, key: string): string {
  const value = o[key] ?? "";
  if (typeof value !== "string") throw new NotOldForm(key);
  return value;
}

function num(o: JsonObject, key: string): number {
  const value = o[key] ?? 0;
  const n = typeof value === "string" && /^-?\d+$/.test(value) ? Number(value) : value;
  if (typeof n !== "number" || !Number.isSafeInteger(n)) throw new NotOldForm(key);
  return n;
}

function bool(o: JsonObject, key: string): boolean {
  const value = o[key] ?? false;
  if (typeof value !== "boolean") throw new NotOldForm(key);
  return value;
}

function strings(o: JsonObject, key: string): string[] {
  const value = o[key] ?? [];
  if (!Array.isArray(value)) throw new NotOldForm(key);
  return value.map((item) => {
    if (typeof item !== "string") throw new NotOldForm(key);
    return item;
  });
}

/** An RFC 3339 timestamp, as the store writes them; null when absent. */
function time(o: JsonObject, key: string): string | null {
  if (o[key] === undefined) return null;
  const date = new Date(str(o, key));
  if (Number.isNaN(date.getTime())) throw new NotOldForm(key);
  return date.toISOString();
}

function requiredTime(o: JsonObject, key: string): string {
  const value = time(o, key);
  if (value === null) throw new NotOldForm(key);
  return value;
}

/** "VM_STATE_RUNNING" → "running" within `allowed` (prefix "VM_STATE_"). */
function enumName(o: JsonObject, key: string, prefix: string, allowed: readonly string[], absent?: string): string {
  if (o[key] === undefined && absent !== undefined) return absent;
  const value = str(o, key);
  const name = value.startsWith(prefix) ? value.slice(prefix.length).toLowerCase().replaceAll("_", "-") : "";
  if (!allowed.includes(name)) throw new NotOldForm(key);
  return name;
}

const orNull = (value: string): string | null => (value === "" ? null : value);

function vmFrom(vm: JsonObject): JsonObject {
  const pendingChanges: JsonObject = {};
  for (const change of strings(vm, "pendingChanges")) {
    const at = change.indexOf("=");
    if (at < 1) throw new NotOldForm("pendingChanges");
    try {
      pendingChanges[change.slice(0, at)] = JSON.parse(change.slice(at + 1)) as Json;
    } catch {
      throw new NotOldForm("pendingChanges");
    }
  }
  return {
    id: str(vm, "id"),
    name: str(vm, "name"),
    imageName: str(vm, "image"),
    kernelName: str(vm, "kernel"),
    vcpu: num(vm, "vcpu"),
    memoryMib: num(vm, "memoryMib"),
    workDiskMib: num(vm, "workDiskMib"),
    guestIp: str(vm, "guestIp"),
    mac: str(vm, "mac"),
    vsockCid: num(vm, "vsockCid"),
    nat: bool(vm, "nat"),
    vmm: enumName(vm, "vmm", "VMM_KIND_", ["firecracker", "qemu-microvm"]),
    rootDiskStrategy: enumName(vm, "rootDiskStrategy", "ROOT_DISK_STRATEGY_", ["dm-snapshot", "clone"]),
    lastError: orNull(str(vm, "lastError")),
    pendingChanges,
    createdAt: requiredTime(vm, "createTime"),
    startedAt: time(vm, "startTime"),
    state: enumName(vm, "state", "VM_STATE_", [
      "creating",
      "starting",
      "running",
      "stopping",
      "stopped",
      "failed",
      "deleting",
    ]),
    pid: num(vm, "pid"),
    agentHealth: enumName(vm, "agentHealth", "AGENT_HEALTH_", ["ok", "unreachable", "none"], ""),
    agentVersion: str(vm, "agentVersion"),
  };
}

function imageFrom(image: JsonObject): JsonObject {
  const config = image["config"] ?? {};
  if (!isObject(config)) throw new NotOldForm("config");
  return {
    name: str(image, "name"),
    reference: orNull(str(image, "reference")),
    manifestDigest: orNull(str(image, "manifestDigest")),
    platform: str(image, "platform"),
    rootfsBytes: num(image, "rootfsBytes"),
    workSeedBytes: num(image, "workSeedBytes"),
    defaultKernel: orNull(str(image, "defaultKernel")),
    source: enumName(image, "source", "IMAGE_SOURCE_", ["pulled", "registered", "promoted", "builtin"]),
    config: {
      entrypoint: strings(config, "entrypoint"),
      cmd: strings(config, "cmd"),
      env: strings(config, "env"),
      user: str(config, "user"),
      workingDir: str(config, "workingDir"),
    },
    createdAt: requiredTime(image, "createTime"),
  };
}

function kernelFrom(kernel: JsonObject): JsonObject {
  return {
    name: str(kernel, "name"),
    version: str(kernel, "version"),
    kernelSha256: str(kernel, "kernelSha256"),
    kernelBytes: num(kernel, "kernelBytes"),
    uncompressed: bool(kernel, "uncompressed"),
    initrdBytes: num(kernel, "initrdBytes"),
    hasModules: bool(kernel, "hasModules"),
    isDefault: bool(kernel, "isDefault"),
    createdAt: requiredTime(kernel, "createTime"),
    usedBy: strings(kernel, "usedBy"),
  };
}
