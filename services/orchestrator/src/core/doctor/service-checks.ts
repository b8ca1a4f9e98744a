/** The service checks: each service answers, at the client's version, the helper with its privileges. */
import type { DoctorCheck } from "../capabilities.js";
import type { HostFeatures } from "../ports.js";
import type { ServiceHealth, ServiceIdentity, ServiceRole } from "../status.js";
import { HELPER_DOWN, check } from "./settle.js";

const START_HINT: Record<ServiceRole, string> = {
  orchestrator: "",
  privileged:
    "start it as root: sudo systemctl start banger-privileged.socket (installed), or sudo ./bin/banger dev up … (from a checkout)",
  "image-puller":
    "start it: sudo systemctl start banger-image-puller.service (installed), or ./bin/banger dev up … (from a checkout)",
};
const PRIVILEGES_HINT: Record<ServiceRole, string> = {
  orchestrator: "run bangerd as the owner user, not root (banger system install sets that up)",
  privileged: "",
  "image-puller":
    "run the image puller as an unprivileged user with no capabilities (banger system install sets that up)",
};

function describeIdentity(identity: ServiceIdentity, socket: string): string {
  return `${identity.version}, pid ${identity.pid}, uid ${identity.uid}, on ${socket}`;
}

export function serviceCheck(health: ServiceHealth): DoctorCheck {
  const name = `service-${health.name}`;
  const identity = health.identity;
  if (!identity) {
    const error = health.error ?? { kind: "unavailable" as const, message: "no answer" };
    const hint =
      error.kind === "permission-denied"
        ? "the helper answers only the owner it was started for (--owner-uid): run bangerd as that user"
        : START_HINT[health.name];
    return check(name, "fail", `not reachable: ${error.message}`, hint);
  }
  // The helper's privileges are a check of their own (helper-privileges).
  if (!identity.privilegesOk && health.name !== "privileged") {
    return check(
      name,
      "warn",
      `${describeIdentity(identity, health.socket)}; ${identity.privilegesDetail}`,
      PRIVILEGES_HINT[health.name],
    );
  }
  return check(name, "ok", describeIdentity(identity, health.socket));
}

export function serviceVersionsCheck(services: readonly ServiceHealth[], clientVersion: string): DoctorCheck {
  const reachable = services.filter((s) => s.identity !== undefined);
  const unreachable = services.filter((s) => s.identity === undefined).map((s) => s.name);
  const want = clientVersion || reachable[0]?.identity?.version || "";
  const versions = reachable.map((s) => `${s.name} ${s.identity?.version ?? ""}`);
  const left = unreachable.length > 0 ? ` (${unreachable.join(" and ")} not reachable)` : "";
  if (reachable.every((s) => s.identity?.version === want)) {
    return check(
      "service-versions",
      "ok",
      `${clientVersion ? "all run" : "the services run"} ${want}${clientVersion ? ", as this client does" : ""}${left}`,
    );
  }
  return check(
    "service-versions",
    "fail",
    `versions differ: ${[...versions, ...(clientVersion ? [`client ${clientVersion}`] : [])].join(", ")}${left}`,
    "run one banger version everywhere: restart the services after an upgrade and use the CLI of the same build",
  );
}

export function helperPrivilegesCheck(
  helper: ServiceHealth | undefined,
  features: HostFeatures | undefined,
): DoctorCheck {
  const identity = helper?.identity;
  if (!identity) return check("helper-privileges", "warn", HELPER_DOWN);
  // Its owner is the uid VMMs run as, and the helper never runs one as root: every VM would fail at launch-vmm.
  if (features?.ownerUid === 0) {
    return check(
      "helper-privileges",
      "fail",
      "VMs cannot start: the helper's owner is root (a VMM never runs as root)",
      "start the helper for the user who runs VMs: from a checkout, sudo ./bin/banger dev up … from that user, or " +
        "dev up --owner USER as root; installed, sudo banger system install --owner USER",
    );
  }
  if (identity.privilegesOk)
    return check("helper-privileges", "ok", `uid ${identity.uid}: ${identity.privilegesDetail}`);
  return check(
    "helper-privileges",
    "fail",
    `uid ${identity.uid}: ${identity.privilegesDetail}`,
    "run the helper as root with CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_CHOWN, CAP_SETUID and CAP_SETGID (banger system install does; from a checkout: sudo ./bin/banger dev up …)",
  );
}
