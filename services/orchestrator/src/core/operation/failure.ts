/** How an operation's end is recorded when its work threw: the failure, and the stage that failed. */
import { CancelledError, codeName, statusOf } from "@banger/common";
import type { OperationFailure, OperationStage } from "../../store/index.js";
import { placeStage } from "./context.js";

/**
 * The failure `error` makes of operation `id` (cancelled when its signal was
 * aborted), and its stages with the one still running marked failed.
 */
export function failureOf(
  id: string,
  error: unknown,
  cancelled: boolean,
  stages: OperationStage[],
  now: () => Date,
): { failure: OperationFailure; stages: OperationStage[] } {
  const status = statusOf(
    cancelled ? new CancelledError(`operation ${id} was cancelled`, { reason: "CANCELLED" }) : error,
  );
  // A stage another service was running when it failed is the failing stage.
  const running = stages.find((st) => st.state === "running");
  const ended = running ? placeStage(stages, { ...running, state: "failed", endedAt: now() }) : stages;
  const thrownStage = (error as { failedStage?: unknown }).failedStage;
  const failedStage = typeof thrownStage === "string" ? thrownStage : running?.name;
  const logTail = cancelled ? undefined : (error as { logTail?: unknown } | undefined)?.logTail;
  const failure: OperationFailure = {
    code: codeName(status.code),
    reason: status.reason,
    message: status.message,
    ...(typeof failedStage === "string" ? { stage: failedStage } : {}),
    ...(typeof logTail === "string" && logTail !== "" ? { vmmLogTail: logTail } : {}),
  };
  return { failure, stages: ended };
}
