import { InvalidArgumentError, implementService } from "@banger/common";
import { ExportFormat, WorkspaceMode, WorkspaceService } from "@banger/gen/banger/v1/workspace_pb.js";
import type { ServiceImpl } from "@connectrpc/connect";
import type { ExportFormat as Format, WorkspaceMode as Mode, Workspaces } from "../core/workspaces.js";
import { operationToProto } from "./to-proto.js";

/** At most this many bytes per ExportWorkspaceResponse. */
const MAX_CHUNK = 64 * 1024;

function modeOf(mode: WorkspaceMode): Mode {
  if (mode === WorkspaceMode.UNSPECIFIED || mode === WorkspaceMode.COPY) return "copy";
  if (mode === WorkspaceMode.GIT) return "git";
  throw new InvalidArgumentError(`unknown workspace mode ${String(mode)}`, { reason: "INVALID_MODE" });
}

function formatOf(format: ExportFormat): Format {
  if (format === ExportFormat.UNSPECIFIED || format === ExportFormat.PATCH) return "patch";
  if (format === ExportFormat.TAR) return "tar";
  throw new InvalidArgumentError(`unknown export format ${String(format)}`, { reason: "INVALID_FORMAT" });
}

/** `banger.v1.WorkspaceService`: a host repository into a guest (an operation), the guest's changes back (a stream). */
export function createWorkspaceService(workspaces: Workspaces): ServiceImpl<typeof WorkspaceService> {
  return implementService(WorkspaceService, {
    async prepareWorkspace(req) {
      const operation = await workspaces.prepare({
        vm: req.vm,
        hostPath: req.hostPath,
        guestPath: req.guestPath,
        mode: modeOf(req.mode),
      });
      return { operation: operationToProto(operation) };
    },

    async *exportWorkspace(req, ctx) {
      const chunks = await workspaces.export(
        { vm: req.vm, guestPath: req.guestPath, format: formatOf(req.format) },
        ctx.signal,
      );
      for await (const chunk of chunks) {
        for (let i = 0; i < chunk.length; i += MAX_CHUNK) yield { data: chunk.subarray(i, i + MAX_CHUNK) };
      }
    },
  });
}
