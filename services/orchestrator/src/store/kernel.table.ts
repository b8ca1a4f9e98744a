/** Row of `kernels`: a kernel (plus optional initrd and modules) in the catalog. */
export interface KernelTable {
  /** Primary key, `^[a-z0-9][a-z0-9._-]{0,63}$`, e.g. "debian-6.1". */
  name: string;
  /** Kernel release, e.g. "6.1.0-27-amd64"; "" if unknown. */
  version: string;
  /** "sha256:…" of the kernel file. */
  kernel_sha256: string;
  kernel_bytes: number;
  /** 1 when the kernel file is an uncompressed vmlinux. */
  uncompressed: 0 | 1;
  /** 0 when there is no initrd. */
  initrd_bytes: number;
  has_modules: 0 | 1;
  /** 1 for the host's default kernel; a partial unique index allows at most one. */
  is_default: 0 | 1;
  created_at: string;
}
