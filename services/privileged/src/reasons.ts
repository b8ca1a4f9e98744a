/**
 * The error reasons only the privileged helper throws. Common's and the shared ones
 * are in @banger/common/reasons; this list joins them in this service's
 * build, so a `reason:` outside all three fails `tsc`.
 */
import { reasonConstants } from "@banger/common/reasons";

declare module "@banger/common/reasons" {
  // eslint-disable-next-line @typescript-eslint/no-empty-object-type -- merging adds the list's names as keys
  interface ServiceReasons extends Record<HelperReason, true> {}
}

export const HELPER_REASONS = [
  "ADDRESS_OUTSIDE_BRIDGE",
  "BRIDGE_ABSENT",
  "BRIDGE_IN_USE",
  "BRIDGE_MISMATCH",
  "DEVICE_MAPPER_ABSENT",
  "FILE_TOO_LARGE",
  "GUEST_PARENT_NOT_DIRECTORY",
  "GUEST_PATH_IS_DIRECTORY",
  "GUEST_REMOVE_FAILED",
  "GUEST_WRITE_FAILED",
  "HARD_LINKED_FILE",
  "INVALID_ACCELERATOR",
  "INVALID_ADDRESS",
  "INVALID_BOOT_ARGS",
  "INVALID_BRIDGE_NAME",
  "INVALID_DISK",
  "INVALID_GUEST_PATH",
  "INVALID_LOG_MAX_BYTES",
  "INVALID_LOOP_DEVICE",
  "INVALID_MAC",
  "INVALID_MEMORY",
  "INVALID_MODE",
  "INVALID_OWNER",
  "INVALID_PATH",
  "INVALID_PID",
  "INVALID_POOL_NAME",
  "INVALID_PREFIX",
  "INVALID_SIGNAL",
  "INVALID_START_TIME",
  "INVALID_TSC_KHZ",
  "INVALID_VCPU",
  "INVALID_VMM_KIND",
  "INVALID_VM_ID",
  "KVM_ABSENT",
  "LOG_RELAY_UNUSABLE",
  "LOOP_NOT_ATTACHED",
  "NOT_A_DIRECTORY",
  "NOT_BANGERS",
  "NOT_OWNER",
  "NOT_OWNERS_FILE",
  "NOT_REGULAR_FILE",
  "NOT_THE_VMS_PROCESS",
  "OWNER_CANNOT_OPEN_DISK",
  "OWNER_IS_ROOT",
  "PATH_CHANGED",
  "PATH_NOT_FOUND",
  "PATH_OUTSIDE_STATE_DIR",
  "QEMU_MACHINE_REQUIRED",
  "RESOLVED_ABSENT",
  "RUNTIME_DIR_ABSENT",
  "RUNTIME_DIR_UNSAFE",
  "RUNTIME_DIR_UNSUPPORTED",
  "SAME_DEVICE",
  "SNAPSHOT_EXISTS",
  "START_TIME_REQUIRED",
  "STATE_DIR_ABSENT",
  "STATE_DIR_NOT_CANONICAL",
  "SUBNET_OVERLAPS",
  "SYMLINK_IN_PATH",
  "TAP_EXISTS",
  "TOO_MANY_FILES",
  "UNEXPECTED_TOOL_OUTPUT",
  "UNSAFE_TEMP_DIR",
  "UNSUPPORTED_GUEST_PATH",
  "VMM_BINARY_UNUSABLE",
  "VMM_FILES_BUSY",
  "VMM_NOT_READY",
  "VM_DISK_NOT_ATTACHED",
] as const;
export type HelperReason = (typeof HELPER_REASONS)[number];
export const HelperReason = reasonConstants(HELPER_REASONS);
