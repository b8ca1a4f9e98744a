import type { Generated } from "kysely";

/**
 * Row of `vms`: what a VM *is*. What is currently true of it on the host
 * (VMM pid, tap, loop and dm devices) is not stored here (DESIGN §5).
 */
export interface VmTable {
  /** Primary key: stable internal id; host resources are named after it. */
  id: string;
  /** Unique. */
  name: string;
  /** → images.name (ON DELETE RESTRICT). */
  image_name: string;
  /** → kernels.name (ON DELETE RESTRICT). */
  kernel_name: string;
  vcpu: number;
  memory_mib: number;
  work_disk_mib: number;
  /** Unique IPv4 address on the banger bridge. */
  guest_ip: string;
  /** Unique (case-insensitively). */
  mac: string;
  /** Unique vsock context id. */
  vsock_cid: number;
  nat: 0 | 1;
  /** "firecracker" | "qemu-microvm". */
  vmm: string;
  /** "dm-snapshot" | "clone". */
  root_disk_strategy: string;
  /** "running" | "stopped". */
  desired_state: string;
  /** The last failure, null when the last action succeeded. */
  last_error: string | null;
  /** JSON object: settings changed while running that apply at the next start. */
  pending_changes: string;
  created_at: string;
  updated_at: string;
  /** When it last started; null if it never did. Added by 2026_11_23_0002. */
  started_at: string | null;
  /** JSON array of the host ports it publishes ({ hostIp, hostPort, guestPort, protocol }). Added by 2026_12_07_0004. */
  published_ports: Generated<string>;
}
