/** Row of `snapshots`: a snapshot of a running VM (memory, device state and disks). */
export interface SnapshotTable {
  /** Primary key, `^[a-z0-9][a-z0-9._-]{0,63}$`. */
  name: string;
  /** The VM it was taken of (its name and id then; the VM may since be gone). */
  vm_name: string;
  vm_id: string;
  /** → images.name (ON DELETE RESTRICT). */
  image_name: string;
  /** → kernels.name (ON DELETE RESTRICT). */
  kernel_name: string;
  /** "firecracker" | "qemu-microvm". */
  vmm: string;
  vcpu: number;
  memory_mib: number;
  work_disk_mib: number;
  /** How the root disk was held: "clone" (root.ext4) or "dm-snapshot" (root.cow over the image). */
  root_disk_strategy: string;
  mac: string;
  created_at: string;
}
