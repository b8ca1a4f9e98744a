import { SystemService, GetStatusResponseSchema, type GetStatusResponse } from "@banger/gen/banger/v1/system_pb.js";
import { create, toJson } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import type { Command } from "commander";
import { connectOrchestrator } from "../client.js";
import { commandOpId, type GlobalOptions } from "../context.js";
import { ReportedFailure } from "../errors.js";
import { renderTable } from "../render/table.js";

const STATUS_TIMEOUT_MS = 10_000;

/** `daemon status`. */
export function registerDaemonCommands(daemon: Command, globals: () => GlobalOptions): void {
  daemon
    .command("status")
    .description(
      "show each service (orchestrator, privileged helper, image puller): reachable or not, version, pid, uid, privileges, socket; exits 1 when any is unreachable",
    )
    .option("--json", "print JSON instead of a table")
    .action(async (opts: { json?: boolean }) => {
      const status = await fetchStatus(globals());
      process.stdout.write(opts.json ? renderStatusJson(status) : renderStatusTable(status));
      if (status.services.some((s) => !s.reachable)) throw new ReportedFailure("a service is unreachable");
    });
}

/** Asks the orchestrator; when it cannot be reached, that is the status. */
async function fetchStatus(globals: GlobalOptions): Promise<GetStatusResponse> {
  const orchestrator = connectOrchestrator(globals);
  try {
    return await orchestrator
      .client(SystemService)
      .getStatus({}, orchestrator.callOptions({ timeoutMs: STATUS_TIMEOUT_MS }));
  } catch (error) {
    if (!(error instanceof ConnectError)) throw error;
    return create(GetStatusResponseSchema, {
      services: [
        {
          name: "orchestrator",
          socket: orchestrator.socket,
          reachable: false,
          errorCode: codeToString(error.code),
          errorMessage: error.rawMessage,
        },
      ],
    });
  } finally {
    orchestrator.close();
  }
}

function renderStatusJson(status: GetStatusResponse): string {
  const body = toJson(GetStatusResponseSchema, status, { alwaysEmitImplicit: true }) as object;
  return JSON.stringify({ opId: commandOpId, ...body }, null, 2) + "\n";
}

function renderStatusTable(status: GetStatusResponse): string {
  const rows = status.services.map((s) =>
    s.reachable
      ? [
          s.name,
          "up",
          s.version,
          String(s.pid),
          String(s.uid),
          s.socket,
          privileges(s.privilegesOk, s.privilegesDetail),
        ]
      : [s.name, "UNREACHABLE", "-", "-", "-", s.socket, s.errorMessage || s.errorCode],
  );
  const table = renderTable(["SERVICE", "STATE", "VERSION", "PID", "UID", "SOCKET", "DETAIL"], rows);
  return `${table}op id: ${commandOpId}\n`;
}

function privileges(ok: boolean, detail: string): string {
  return `privileges ${ok ? "ok" : "WARN"}: ${detail}`;
}
