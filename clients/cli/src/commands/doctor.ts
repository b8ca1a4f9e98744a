import { BANGER_VERSION } from "@banger/common/version";
import {
  CheckStatus,
  DoctorResponseSchema,
  SystemService,
  type DoctorCheck,
  type DoctorResponse,
} from "@banger/gen/banger/v1/system_pb.js";
import { create, toJson } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import type { Command } from "commander";
import { connectOrchestrator } from "../client.js";
import { commandOpId, type GlobalOptions } from "../context.js";
import { ReportedFailure } from "../errors.js";
import { renderTable } from "../render/table.js";

/** Each of doctor's probes has its own 5 s deadline; this bounds the whole call. */
const DOCTOR_TIMEOUT_MS = 30_000;

/** `doctor`'s action; main.ts declares the command with its description and `--json` (what `banger --help` shows). */
export function registerDoctorCommand(doctor: Command, globals: () => GlobalOptions): void {
  doctor.action(async (opts: { json?: boolean }) => {
    const report = await fetchDoctor(globals());
    process.stdout.write(opts.json ? renderDoctorJson(report) : renderDoctorTable(report));
    if (!report.ok) throw new ReportedFailure("a check failed");
  });
}

/** Asks the orchestrator; when it cannot be reached, that is the one (failing) check. */
async function fetchDoctor(globals: GlobalOptions): Promise<DoctorResponse> {
  const orchestrator = connectOrchestrator(globals);
  try {
    return await orchestrator
      .client(SystemService)
      .doctor({ clientVersion: BANGER_VERSION }, orchestrator.callOptions({ timeoutMs: DOCTOR_TIMEOUT_MS }));
  } catch (error) {
    if (!(error instanceof ConnectError)) throw error;
    return create(DoctorResponseSchema, {
      ok: false,
      checks: [
        {
          name: "service-orchestrator",
          status: CheckStatus.FAIL,
          detail: `not reachable: ${error.rawMessage}`,
          hint: "start bangerd: systemctl start bangerd.service (installed), or ./bin/banger dev up … (from a checkout); --socket or $BANGER_RUNTIME_DIR if it runs elsewhere",
        },
      ],
      rootDiskStrategy: "unknown (bangerd is not reachable)",
      vmm: "unknown (bangerd is not reachable)",
    });
  } finally {
    orchestrator.close();
  }
}

function renderDoctorJson(report: DoctorResponse): string {
  const body = toJson(DoctorResponseSchema, report, { alwaysEmitImplicit: true }) as object;
  return JSON.stringify({ opId: commandOpId, ...body }, null, 2) + "\n";
}

const STATUS_TEXT: Record<CheckStatus, string> = {
  [CheckStatus.UNSPECIFIED]: "?",
  [CheckStatus.OK]: "ok",
  [CheckStatus.WARN]: "WARN",
  [CheckStatus.FAIL]: "FAIL",
};

/** A feature's checks are named `<capability>/<check>`, e.g. "nat/ip-forwarding". */
function checkName(check: DoctorCheck): string {
  return check.capability ? `${check.capability}/${check.name}` : check.name;
}

function renderDoctorTable(report: DoctorResponse): string {
  const table = renderTable(
    ["STATUS", "CHECK", "DETAIL"],
    report.checks.map((c) => [STATUS_TEXT[c.status], checkName(c), c.detail]),
  ).split("\n");
  // The hint goes on its own line under the row it belongs to, under the CHECK column.
  const indent = " ".repeat(Math.max("STATUS".length, ...report.checks.map((c) => STATUS_TEXT[c.status].length)) + 2);
  const lines = [table[0] ?? ""];
  report.checks.forEach((c, i) => {
    lines.push(table[i + 1] ?? "");
    if (c.hint && c.status !== CheckStatus.OK) lines.push(`${indent}→ ${c.hint}`);
  });
  const count = (status: CheckStatus) => report.checks.filter((c) => c.status === status).length;
  const [fails, warns] = [count(CheckStatus.FAIL), count(CheckStatus.WARN)];
  const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;
  return (
    `${lines.join("\n")}\n\n` +
    `root disks: ${report.rootDiskStrategy}\n` +
    `VMM: ${report.vmm}\n` +
    `${plural(report.checks.length, "check")}: ${plural(fails, "failure")}, ${plural(warns, "warning")}` +
    `${report.ok ? "" : "; banger (or the feature named) cannot work until each FAIL is fixed"}\n` +
    `op id: ${commandOpId}\n`
  );
}
