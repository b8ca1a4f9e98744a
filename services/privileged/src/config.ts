import { resolve } from "node:path";

/**
 * The helper's own configuration. The owner and the directories come from
 * here (command line / install metadata), never from a request.
 */
export interface HelperConfig {
  /** The only uid the helper answers; VMMs run as this uid. */
  readonly ownerUid: number;
  /** The gid VMMs run as. */
  readonly ownerGid: number;
  /** banger's state directory: every file the helper touches must be inside it. */
  readonly stateDir: string;
  /** banger's runtime directory: VM sockets and logs live under `<runtimeDir>/vms/<vm_id>/`. */
  readonly runtimeDir: string;
  /** Firecracker binary. */
  readonly firecrackerBin: string;
  /** QEMU binary (qemu-system-x86_64). */
  readonly qemuBin: string;
}

export function helperConfig(values: Partial<Record<keyof HelperConfig, string | number | undefined>>): HelperConfig {
  const owner = Number(values.ownerUid ?? process.getuid?.() ?? 0);
  return {
    ownerUid: owner,
    ownerGid: Number(values.ownerGid ?? owner),
    stateDir: resolve(String(values.stateDir ?? "/var/lib/banger")),
    runtimeDir: resolve(String(values.runtimeDir ?? "/run/banger")),
    firecrackerBin: String(values.firecrackerBin ?? "/usr/local/bin/firecracker"),
    qemuBin: String(values.qemuBin ?? "/usr/bin/qemu-system-x86_64"),
  };
}
