import { StageState, type Operation } from "@banger/gen/banger/v1/operation_pb.js";
import { createStagePrinter } from "./operation.js";

export interface ProgressOutput {
  write(text: string): void;
  /** A terminal gets live bars redrawn in place; anything else gets plain lines. */
  readonly isTTY: boolean;
  /** Terminal width; bars shrink to fit. */
  readonly columns: number;
}

const BAR_WIDTH = 24;

function mib(bytes: bigint): string {
  return `${(Number(bytes) / 1048576).toFixed(1)}`;
}

function bar(done: bigint, total: bigint, width: number): string {
  const filled = total > 0n ? Math.min(width, Math.round((Number(done) / Number(total)) * width)) : 0;
  return `[${"#".repeat(filled)}${"-".repeat(width - filled)}]`;
}

/** "sha256:0123456789ab…" → "0123456789ab" */
function shortId(id: string): string {
  return (id.split(":")[1] ?? id).slice(0, 12);
}

/**
 * Shows an operation as it moves: each stage change as a line (as
 * createStagePrinter), and for a running stage with byte progress (the layers
 * of a pull) one bar per item, redrawn in place on a terminal. Elsewhere (a
 * pipe, a log) each item gets one plain line when its bytes are in.
 */
export function createProgressRenderer(out: ProgressOutput): {
  update(op: Operation): void;
  /** Writes a line of its own between updates (the live bars are drawn again at the next update). */
  say(line: string): void;
  finish(): void;
} {
  let liveLines = 0;
  const reported = new Set<string>();
  const stagePrinter = createStagePrinter((line) => out.write(line));

  const clearLive = () => {
    if (liveLines > 0) out.write(`\x1b[${liveLines}A\x1b[J`);
    liveLines = 0;
  };

  const liveArea = (op: Operation): string[] => {
    const lines: string[] = [];
    for (const stage of op.stages) {
      const progress = stage.progress;
      if (stage.state !== StageState.RUNNING || !progress) continue;
      const width = Math.max(8, Math.min(BAR_WIDTH, out.columns - 50));
      for (const item of progress.items) {
        lines.push(
          `    ${shortId(item.id)} ${bar(item.doneBytes, item.totalBytes, width)} ${mib(item.doneBytes)}/${mib(item.totalBytes)} MiB ${item.state}`,
        );
      }
      if (progress.items.length > 1) {
        lines.push(
          `    ${"total".padEnd(12)} ${bar(progress.doneBytes, progress.totalBytes, width)} ${mib(progress.doneBytes)}/${mib(progress.totalBytes)} MiB`,
        );
      }
    }
    return lines;
  };

  const plainItems = (op: Operation) => {
    for (const stage of op.stages) {
      for (const [index, item] of (stage.progress?.items ?? []).entries()) {
        if (!["cached", "downloaded", "applied"].includes(item.state) || reported.has(item.id)) continue;
        reported.add(item.id);
        const count = stage.progress?.items.length ?? 0;
        out.write(`    layer ${index + 1}/${count} ${shortId(item.id)} ${mib(item.totalBytes)} MiB ${item.state}\n`);
      }
    }
  };

  return {
    update(op) {
      if (!out.isTTY) {
        stagePrinter(op);
        plainItems(op);
        return;
      }
      clearLive();
      stagePrinter(op);
      const lines = liveArea(op);
      for (const line of lines) out.write(`${line}\n`);
      liveLines = lines.length;
    },
    say(line) {
      if (out.isTTY) clearLive();
      out.write(line);
    },
    finish() {
      if (out.isTTY) clearLive();
    },
  };
}
