/**
 * A create or start is a list of stages; each that changed the host pushes
 * its undo, and a failure runs them in reverse order (each undo logged, not
 * thrown, when it fails itself).
 */
import type { Logger } from "@banger/common";
import type { OperationContext } from "../operations.js";

/** The undo steps of the stages done so far, in the order they were done. */
export type UndoList = (() => Promise<unknown>)[];

/** Runs `work` as a stage whose undo is pushed on `undo` once it succeeded. */
export async function staged<T>(
  op: OperationContext,
  undo: UndoList,
  name: string,
  work: () => Promise<T>,
  rollback?: (value: T) => Promise<unknown>,
): Promise<T> {
  const value = await op.stage(name, work);
  if (rollback) undo.push(() => rollback(value));
  return value;
}

export async function unwind(logger: Logger, undo: UndoList, vm: string): Promise<void> {
  for (const step of undo.reverse()) {
    try {
      await step();
    } catch (error) {
      logger.error({ vm, err: error }, "could not undo a stage; a host resource may be left behind");
    }
  }
}
