import { NotFoundError } from "@banger/common";
import type { Insertable, Kysely, Selectable, Updateable } from "kysely";
import {
  corrupt,
  fromFlag,
  fromNullableTimestamp,
  fromTimestamp,
  isJsonObject,
  type JsonObject,
  type JsonValue,
  numberField,
  oneOf,
  parseJson,
  parseJsonObject,
  stringField,
  toFlag,
  toJson,
  toTimestamp,
} from "./columns.js";
import { guardWrite } from "./errors.js";
import type { Database } from "./schema.js";
import type { VmTable } from "./vm.table.js";

export const VMM_KINDS = ["firecracker", "qemu-microvm"] as const;
export type VmmKind = (typeof VMM_KINDS)[number];

export const ROOT_DISK_STRATEGIES = ["dm-snapshot", "clone"] as const;
export type RootDiskStrategy = (typeof ROOT_DISK_STRATEGIES)[number];

export const PORT_PROTOCOLS = ["tcp", "udp"] as const;
export type PortProtocol = (typeof PORT_PROTOCOLS)[number];

/** A host port a VM publishes: host traffic to hostIp:hostPort reaches the guest's guestPort. */
export interface PublishedPort {
  /** "0.0.0.0" (every address), "127.0.0.1" or one of the host's IPv4 addresses. */
  readonly hostIp: string;
  readonly hostPort: number;
  readonly guestPort: number;
  readonly protocol: PortProtocol;
}

export const DESIRED_STATES = ["running", "stopped"] as const;
export type DesiredState = (typeof DESIRED_STATES)[number];

/** What a VM is, as stored. */
export interface VmRecord {
  readonly id: string;
  readonly name: string;
  readonly imageName: string;
  readonly kernelName: string;
  readonly vcpu: number;
  readonly memoryMib: number;
  readonly workDiskMib: number;
  readonly guestIp: string;
  readonly mac: string;
  readonly vsockCid: number;
  readonly nat: boolean;
  readonly vmm: VmmKind;
  readonly rootDiskStrategy: RootDiskStrategy;
  readonly desiredState: DesiredState;
  /** The last failure; null when the last action succeeded. */
  readonly lastError: string | null;
  /** Settings changed while it ran that apply at the next start, e.g. `{ "vcpu": 2 }`. */
  readonly pendingChanges: JsonObject;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  /** When it last started; null if it never did. */
  readonly startedAt: Date | null;
  /** The host ports it publishes, sorted (host port, protocol, host address). */
  readonly publishedPorts: readonly PublishedPort[];
}

/** A VM to insert: `updatedAt` defaults to `createdAt`, the rest to "nothing yet". */
export type NewVm = Omit<VmRecord, "lastError" | "pendingChanges" | "updatedAt" | "startedAt" | "publishedPorts"> & {
  readonly publishedPorts?: readonly PublishedPort[];
  readonly lastError?: string | null;
  readonly pendingChanges?: JsonObject;
  readonly updatedAt?: Date;
  readonly startedAt?: Date | null;
};

/**
 * What may change on an existing VM. Its id, name, image and addresses are
 * what it is and never change; `updatedAt` is always set.
 */
export interface VmPatch {
  readonly updatedAt: Date;
  readonly kernelName?: string;
  readonly vcpu?: number;
  readonly memoryMib?: number;
  readonly workDiskMib?: number;
  readonly nat?: boolean;
  readonly vmm?: VmmKind;
  readonly rootDiskStrategy?: RootDiskStrategy;
  readonly desiredState?: DesiredState;
  readonly lastError?: string | null;
  readonly pendingChanges?: JsonObject;
  readonly startedAt?: Date | null;
  readonly publishedPorts?: readonly PublishedPort[];
}

/**
 * Errors: AlreadyExistsError VM_NAME_TAKEN / VM_ID_TAKEN / ADDRESS_TAKEN (guest
 * IP, MAC or vsock CID in use), NotFoundError IMAGE_NOT_FOUND / KERNEL_NOT_FOUND.
 */
export async function insertVm(db: Kysely<Database>, vm: NewVm): Promise<VmRecord> {
  const row: Insertable<VmTable> = {
    id: vm.id,
    name: vm.name,
    image_name: vm.imageName,
    kernel_name: vm.kernelName,
    vcpu: vm.vcpu,
    memory_mib: vm.memoryMib,
    work_disk_mib: vm.workDiskMib,
    guest_ip: vm.guestIp,
    mac: vm.mac,
    vsock_cid: vm.vsockCid,
    nat: toFlag(vm.nat),
    vmm: vm.vmm,
    root_disk_strategy: vm.rootDiskStrategy,
    desired_state: vm.desiredState,
    last_error: vm.lastError ?? null,
    pending_changes: toJson(vm.pendingChanges ?? {}),
    created_at: toTimestamp(vm.createdAt),
    updated_at: toTimestamp(vm.updatedAt ?? vm.createdAt),
    started_at: vm.startedAt ? toTimestamp(vm.startedAt) : null,
    published_ports: portsToJson(vm.publishedPorts ?? []),
  };
  const inserted = await guardWrite(db, { action: "insert", table: "vms", values: row }, () =>
    db.insertInto("vms").values(row).returningAll().executeTakeFirstOrThrow(),
  );
  return vmFromRow(inserted);
}

export async function getVmByName(db: Kysely<Database>, name: string): Promise<VmRecord | undefined> {
  const row = await db.selectFrom("vms").selectAll().where("name", "=", name).executeTakeFirst();
  return row && vmFromRow(row);
}

export async function getVmById(db: Kysely<Database>, id: string): Promise<VmRecord | undefined> {
  const row = await db.selectFrom("vms").selectAll().where("id", "=", id).executeTakeFirst();
  return row && vmFromRow(row);
}

/** Every VM, by name. */
export async function listVms(db: Kysely<Database>): Promise<VmRecord[]> {
  const rows = await db.selectFrom("vms").selectAll().orderBy("name").execute();
  return rows.map(vmFromRow);
}

/**
 * Applies `patch` and returns the VM as it now is. Errors: NotFoundError
 * VM_NOT_FOUND, or KERNEL_NOT_FOUND when `kernelName` names no kernel.
 */
export async function updateVm(db: Kysely<Database>, name: string, patch: VmPatch): Promise<VmRecord> {
  const values: Updateable<VmTable> = { updated_at: toTimestamp(patch.updatedAt) };
  if (patch.kernelName !== undefined) values.kernel_name = patch.kernelName;
  if (patch.vcpu !== undefined) values.vcpu = patch.vcpu;
  if (patch.memoryMib !== undefined) values.memory_mib = patch.memoryMib;
  if (patch.workDiskMib !== undefined) values.work_disk_mib = patch.workDiskMib;
  if (patch.nat !== undefined) values.nat = toFlag(patch.nat);
  if (patch.vmm !== undefined) values.vmm = patch.vmm;
  if (patch.rootDiskStrategy !== undefined) values.root_disk_strategy = patch.rootDiskStrategy;
  if (patch.desiredState !== undefined) values.desired_state = patch.desiredState;
  if (patch.lastError !== undefined) values.last_error = patch.lastError;
  if (patch.pendingChanges !== undefined) values.pending_changes = toJson(patch.pendingChanges);
  if (patch.startedAt !== undefined) values.started_at = patch.startedAt && toTimestamp(patch.startedAt);
  if (patch.publishedPorts !== undefined) values.published_ports = portsToJson(patch.publishedPorts);

  const row = await guardWrite(db, { action: "update", table: "vms", values }, () =>
    db.updateTable("vms").set(values).where("name", "=", name).returningAll().executeTakeFirst(),
  );
  if (row === undefined) throw new NotFoundError(`no VM named "${name}"`, { reason: "VM_NOT_FOUND" });
  return vmFromRow(row);
}

/** Deletes the VM's row; false if there was none (deleting twice is not an error). */
export async function deleteVm(db: Kysely<Database>, name: string): Promise<boolean> {
  const result = await guardWrite(db, { action: "delete", table: "vms", key: name }, () =>
    db.deleteFrom("vms").where("name", "=", name).executeTakeFirst(),
  );
  return result.numDeletedRows > 0n;
}

function vmFromRow(row: Selectable<VmTable>): VmRecord {
  const at = (column: string) => `vms.${column} of VM "${row.name}"`;
  return {
    id: row.id,
    name: row.name,
    imageName: row.image_name,
    kernelName: row.kernel_name,
    vcpu: row.vcpu,
    memoryMib: row.memory_mib,
    workDiskMib: row.work_disk_mib,
    guestIp: row.guest_ip,
    mac: row.mac,
    vsockCid: row.vsock_cid,
    nat: fromFlag(row.nat, at("nat")),
    vmm: oneOf(VMM_KINDS, row.vmm, at("vmm")),
    rootDiskStrategy: oneOf(ROOT_DISK_STRATEGIES, row.root_disk_strategy, at("root_disk_strategy")),
    desiredState: oneOf(DESIRED_STATES, row.desired_state, at("desired_state")),
    lastError: row.last_error,
    pendingChanges: parseJsonObject(row.pending_changes, at("pending_changes")),
    createdAt: fromTimestamp(row.created_at, at("created_at")),
    updatedAt: fromTimestamp(row.updated_at, at("updated_at")),
    startedAt: fromNullableTimestamp(row.started_at, at("started_at")),
    publishedPorts: portsFromJson(row.published_ports, at("published_ports")),
  };
}

/** The order published ports are kept and shown in: host port, protocol, host address. */
export function comparePorts(a: PublishedPort, b: PublishedPort): number {
  return a.hostPort - b.hostPort || a.protocol.localeCompare(b.protocol) || a.hostIp.localeCompare(b.hostIp);
}

function portsToJson(ports: readonly PublishedPort[]): string {
  return toJson(publishedPortsToJson(ports));
}

function portsFromJson(text: string, where: string): PublishedPort[] {
  return publishedPortsFromJson(parseJson(text, where), where);
}

/** Published ports as plain JSON, sorted. */
export function publishedPortsToJson(ports: readonly PublishedPort[]): JsonValue {
  return [...ports]
    .sort(comparePorts)
    .map(({ hostIp, hostPort, guestPort, protocol }) => ({ hostIp, hostPort, guestPort, protocol }));
}

/** Published ports read back from plain JSON (an array of objects), each field checked. */
export function publishedPortsFromJson(value: JsonValue, where: string): PublishedPort[] {
  if (!Array.isArray(value)) throw corrupt(where, "not a JSON array");
  return value.map((item) => {
    if (!isJsonObject(item)) throw corrupt(where, "an entry is not a JSON object");
    return {
      hostIp: stringField(item, "hostIp", where),
      hostPort: numberField(item, "hostPort", where),
      guestPort: numberField(item, "guestPort", where),
      protocol: oneOf(PORT_PROTOCOLS, stringField(item, "protocol", where), where),
    };
  });
}
