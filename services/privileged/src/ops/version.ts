import { effectiveCapabilities } from "@banger/common/process-info";
import { BANGER_VERSION } from "@banger/common/version";

/** The capabilities the helper needs, and nothing more (DESIGN.md §7). */
export const REQUIRED_CAPABILITIES = [
  "CAP_NET_ADMIN",
  "CAP_SYS_ADMIN",
  "CAP_CHOWN",
  "CAP_SETUID",
  "CAP_SETGID",
] as const;

export interface HelperIdentity {
  readonly version: string;
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
  readonly capabilities: readonly string[];
  readonly missingCapabilities: readonly string[];
  readonly privilegesOk: boolean;
  readonly privilegesDetail: string;
  readonly ownerUid: number;
}

/** Who the helper runs as and whether it holds what its host operations need. */
export function describeHelper(ownerUid: number, capabilities = effectiveCapabilities()): HelperIdentity {
  const missing = REQUIRED_CAPABILITIES.filter((cap) => !capabilities.includes(cap));
  const extra = capabilities.filter((cap) => !(REQUIRED_CAPABILITIES as readonly string[]).includes(cap));
  let detail: string;
  if (missing.length > 0) {
    detail = `missing ${missing.join(", ")}: host operations that need them will fail`;
  } else if (extra.length > 0) {
    detail = `holds the ${REQUIRED_CAPABILITIES.length} capabilities it needs and ${extra.length} more (the systemd unit drops those)`;
  } else {
    detail = `holds exactly the ${REQUIRED_CAPABILITIES.length} capabilities it needs`;
  }
  return {
    version: BANGER_VERSION,
    pid: process.pid,
    uid: process.getuid?.() ?? -1,
    gid: process.getgid?.() ?? -1,
    capabilities,
    missingCapabilities: missing,
    privilegesOk: missing.length === 0,
    privilegesDetail: detail,
    ownerUid,
  };
}
