import { OperationState, StageState, type Operation } from "@banger/gen/banger/v1/operation_pb.js";

const STAGE_WORD: Partial<Record<StageState, string>> = {
  [StageState.RUNNING]: "…",
  [StageState.DONE]: "done",
  [StageState.FAILED]: "FAILED",
  [StageState.SKIPPED]: "skipped",
  [StageState.ROLLED_BACK]: "rolled back",
};

export const STATE_WORD: Record<OperationState, string> = {
  [OperationState.UNSPECIFIED]: "?",
  [OperationState.PENDING]: "pending",
  [OperationState.RUNNING]: "running",
  [OperationState.SUCCEEDED]: "succeeded",
  [OperationState.FAILED]: "failed",
  [OperationState.CANCELLED]: "cancelled",
};

export function isEnded(op: Operation): boolean {
  return (
    op.state === OperationState.SUCCEEDED || op.state === OperationState.FAILED || op.state === OperationState.CANCELLED
  );
}

function seconds(op: Operation["stages"][number]): string {
  const e = op.elapsed;
  return e ? `${(Number(e.seconds) + e.nanos / 1e9).toFixed(1)} s` : "";
}

/**
 * Prints each stage change once, as plain lines (fit for a terminal and for
 * logs alike): `  resolve … ` when it starts, `  resolve done (0.4 s)` when it ends,
 * followed by the stage's note when it left one (`: tap bgr-… from the warm pool`).
 */
export function createStagePrinter(write: (line: string) => void): (op: Operation) => void {
  const printed = new Map<string, StageState>();
  return (op) => {
    for (const stage of op.stages) {
      if (printed.get(stage.name) === stage.state) continue;
      printed.set(stage.name, stage.state);
      const word = STAGE_WORD[stage.state];
      if (!word) continue;
      const time = stage.state === StageState.RUNNING ? "" : ` (${seconds(stage)})`;
      const note = stage.state === StageState.RUNNING || stage.message === "" ? "" : `: ${stage.message}`;
      write(`  ${stage.name.padEnd(12)} ${word}${time}${note}\n`);
    }
  };
}
