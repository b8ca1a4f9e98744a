/**
 * `banger system status`: each unit's state as systemd reports it, and the
 * live check of the three services (through bangerd's socket).
 */
import { renderTable } from "../render/table.js";
import { checkLive, type LiveStatus } from "./health.js";
import type { SystemHost } from "./host.js";
import { UNIT_FILES } from "./layout.js";
import type { InstallMetadata } from "./metadata.js";

export interface UnitState {
  readonly unit: string;
  readonly load: string;
  readonly active: string;
  readonly sub: string;
  /** `enabled`, `static`… (UnitFileState). */
  readonly enabled: string;
}

export interface SystemStatus {
  readonly metadata: InstallMetadata;
  readonly units: readonly UnitState[];
  readonly live: LiveStatus;
}

/** `systemctl show` of every unit: blocks of `Key=value` lines separated by a blank line. */
export function unitStates(host: SystemHost): UnitState[] {
  const out = host.mustRun([
    "systemctl",
    "show",
    "--property=Id,LoadState,ActiveState,SubState,UnitFileState",
    ...UNIT_FILES,
  ]);
  const blocks = out.split(/\n\s*\n/).filter((b) => b.trim() !== "");
  const states = blocks.map((block) => {
    const values = new Map(
      block
        .split("\n")
        .map((line) => line.split("="))
        .map(([key = "", ...rest]) => [key, rest.join("=")]),
    );
    return {
      unit: values.get("Id") ?? "?",
      load: values.get("LoadState") || "-",
      active: values.get("ActiveState") || "-",
      sub: values.get("SubState") || "-",
      enabled: values.get("UnitFileState") || "-",
    };
  });
  return UNIT_FILES.map(
    (unit) => states.find((s) => s.unit === unit) ?? { unit, load: "-", active: "-", sub: "-", enabled: "-" },
  );
}

export async function systemStatus(
  host: SystemHost,
  metadata: InstallMetadata,
  timeoutMs: number,
): Promise<SystemStatus> {
  // The live check first: with socket activation it starts what is not running yet,
  // so the unit states read after it show the services as they serve.
  const live = await checkLive(metadata.paths.sockets.orchestrator, timeoutMs);
  return { metadata, units: unitStates(host), live };
}

export function healthy(status: SystemStatus): boolean {
  return (
    status.units.every((u) => u.load === "loaded" && u.active === "active") &&
    status.live.services.length === 3 &&
    status.live.services.every((s) => s.reachable)
  );
}

export function renderStatusTable(status: SystemStatus): string {
  const m = status.metadata;
  const head = `banger ${m.version} installed for ${m.owner.user} (uid ${m.owner.uid}) from ${m.code.dir} at ${m.installedAt}\n\n`;
  const units = renderTable(
    ["UNIT", "LOAD", "ACTIVE", "SUB", "ENABLED"],
    status.units.map((u) => [u.unit, u.load, u.active, u.sub, u.enabled]),
  );
  const services = renderTable(
    ["SERVICE", "STATE", "VERSION", "PID", "UID", "SOCKET", "DETAIL"],
    status.live.services.map((s) =>
      s.reachable
        ? [
            s.name,
            "up",
            s.version,
            String(s.pid),
            String(s.uid),
            s.socket,
            `privileges ${s.privilegesOk ? "ok" : "WARN"}: ${s.detail}`,
          ]
        : [s.name, "UNREACHABLE", "-", "-", "-", s.socket || "-", s.detail],
    ),
  );
  return `${head}${units}\n${services}op id: ${status.live.opId}\n`;
}

export function renderStatusJson(status: SystemStatus): string {
  const m = status.metadata;
  return (
    JSON.stringify(
      {
        opId: status.live.opId,
        healthy: healthy(status),
        installed: {
          version: m.version,
          installedAt: m.installedAt,
          owner: m.owner,
          codeDir: m.code.dir,
          node: m.code.node,
        },
        units: status.units,
        services: status.live.services,
      },
      null,
      2,
    ) + "\n"
  );
}
