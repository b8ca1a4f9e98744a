/** Row of `images`: a root filesystem VMs are created from. */
export interface ImageTable {
  /** Primary key, `^[a-z0-9][a-z0-9._-]{0,63}$`, e.g. "debian". */
  name: string;
  /** OCI reference it was pulled from; null when registered or promoted. */
  reference: string | null;
  /** "sha256:…" of the manifest it was built from; null when not pulled. */
  manifest_digest: string | null;
  /** e.g. "linux/amd64". */
  platform: string;
  rootfs_bytes: number;
  /** 0 when the image has no work seed. */
  work_seed_bytes: number;
  /** → kernels.name (ON DELETE RESTRICT); null = the host default kernel. */
  default_kernel: string | null;
  /** "pulled" | "registered" | "promoted". */
  source: string;
  /** JSON: the kept parts of the OCI image config. */
  config: string;
  created_at: string;
}
