import { createHash } from "node:crypto";
import { InvalidArgumentError } from "@banger/common/errors";
import { LINK_ALIAS_PREFIX } from "@banger/common/layout";

/** VM ids as every banger service spells them; checked once, before they become names or paths. */
const VM_ID = /^[a-z0-9][a-z0-9-]{0,31}$/;

/** The prefix of every device name banger makes (links, dm devices); nothing else is ever touched. */
export const DEVICE_PREFIX = "bgr-";

/** Link alias that marks a link as banger's: `banger:tap:<vm_id>`, `banger:pool`, `banger:bridge`. */
export const ALIAS_PREFIX = LINK_ALIAS_PREFIX;

export function validVmId(value: string, field = "vm_id"): string {
  if (!VM_ID.test(value)) {
    throw new InvalidArgumentError(`${field} must match ${VM_ID.source}`, { reason: "INVALID_VM_ID" });
  }
  return value;
}

/** Whether `value` is a valid VM id (validVmId without the error). */
export function isVmId(value: string): boolean {
  try {
    validVmId(value);
    return true;
  } catch {
    return false;
  }
}

/**
 * A VM's tap name: `bgr-` + 11 hex digits of the id's sha256. Always 15 bytes
 * (IFNAMSIZ - 1), never a `%`, and the same for the same id.
 */
export function tapName(vmId: string): string {
  return `${DEVICE_PREFIX}${createHash("sha256").update(validVmId(vmId)).digest("hex").slice(0, 11)}`;
}

/** A VM's dm-snapshot name. */
export function snapshotName(vmId: string): string {
  return `${DEVICE_PREFIX}${validVmId(vmId)}-root`;
}

/** A VM's dm uuid: banger's prefix, so teardown can prove the device is banger's. */
export function snapshotUuid(vmId: string): string {
  return `BANGER-${validVmId(vmId)}`;
}

const BRIDGE = /^bgr[a-z0-9]{1,12}$/;

export function validBridgeName(value: string): string {
  if (!BRIDGE.test(value)) {
    throw new InvalidArgumentError(`bridge name must match ${BRIDGE.source}`, { reason: "INVALID_BRIDGE_NAME" });
  }
  return value;
}
