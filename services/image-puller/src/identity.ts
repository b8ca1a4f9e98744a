import { BANGER_VERSION } from "@banger/common/version";
import { effectiveCapabilities, type ServiceIdentity } from "@banger/common/process-info";

/**
 * Who the puller runs as. It parses untrusted archives, so the right answer
 * is "no privileges at all": not root and no capabilities.
 */
export function describePuller(capabilities = effectiveCapabilities()): ServiceIdentity {
  const uid = process.getuid?.() ?? -1;
  let detail: string;
  if (uid === 0) {
    detail = "runs as root; it parses untrusted images and must run as an unprivileged user";
  } else if (capabilities.length > 0) {
    detail = `holds ${capabilities.join(", ")}; it needs no capabilities`;
  } else {
    detail = "unprivileged, as it should be";
  }
  return {
    version: BANGER_VERSION,
    pid: process.pid,
    uid,
    gid: process.getgid?.() ?? -1,
    privilegesOk: uid !== 0 && capabilities.length === 0,
    privilegesDetail: detail,
  };
}
