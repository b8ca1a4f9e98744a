import { PruneResponseSchema, SystemService, type PruneResponse } from "@banger/gen/banger/v1/system_pb.js";
import { toJson } from "@bufbuild/protobuf";
import type { Command } from "commander";
import { connectOrchestrator } from "../client.js";
import { commandOpId, type GlobalOptions } from "../context.js";
import { UsageError } from "../errors.js";
import { mib } from "../render/size.js";
import { renderTable } from "../render/table.js";

/** `prune`'s action; main.ts declares the command with its description and options (what `banger --help` shows). */
export function registerPruneCommand(prune: Command, globals: () => GlobalOptions): void {
  prune.action(async (opts: { all?: boolean; force?: boolean; json?: boolean }) => {
    if (opts.force === true && opts.all !== true) throw new UsageError("--force deletes what --all lists: give both");
    const orchestrator = connectOrchestrator(globals());
    try {
      const report = await orchestrator
        .client(SystemService)
        .prune({ all: opts.all === true, force: opts.force === true }, orchestrator.callOptions());
      process.stdout.write(
        opts.json ? renderPruneJson(report) : renderPrune(report, opts.all === true, opts.force === true),
      );
    } finally {
      orchestrator.close();
    }
  });
}

function renderPruneJson(report: PruneResponse): string {
  const body = toJson(PruneResponseSchema, report, { alwaysEmitImplicit: true }) as object;
  return JSON.stringify({ opId: commandOpId, ...body }, null, 2) + "\n";
}

function renderPrune(report: PruneResponse, all: boolean, force: boolean): string {
  const lines = [
    `operations: ${report.removedOperations} removed (ended over ${report.retentionDays} days ago)`,
    report.cacheError
      ? `image puller's cache: not pruned: ${report.cacheError}`
      : `image puller's cache: ${report.removedBlobs} blobs removed, ${mib(report.cacheFreedBytes)} freed`,
  ];
  let text = lines.join("\n") + "\n";
  if (all && report.unused.length === 0) text += "images and kernels: nothing unused\n";
  if (report.unused.length > 0) {
    const rows = report.unused.map((item) => [
      item.kind,
      item.name,
      mib(item.bytes),
      item.removed ? "deleted" : force ? `kept: ${item.note}` : "would delete",
    ]);
    text += "\n" + renderTable(["KIND", "NAME", "SIZE", "DONE"], rows);
    if (!force) text += "\nrun again with --all --force to delete them\n";
  }
  return text;
}
