import type { ServiceIdentity } from "../core/status.js";

/** Both peers answer GetVersion with these fields; keep only what status needs. */
export function identityFromVersion(v: ServiceIdentity): ServiceIdentity {
  return {
    version: v.version,
    pid: v.pid,
    uid: v.uid,
    gid: v.gid,
    privilegesOk: v.privilegesOk,
    privilegesDetail: v.privilegesDetail,
  };
}
