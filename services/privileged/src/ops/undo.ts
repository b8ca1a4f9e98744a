/**
 * Runs the steps of a multi-step host change, remembering how to undo each.
 * If a step fails, the earlier ones are undone in reverse order and the
 * first error is rethrown (an undo that also fails is attached as its cause's
 * sibling, not lost): a failed operation leaves nothing behind.
 */
export async function withUndo<T>(body: (onUndo: (undo: () => Promise<unknown>) => void) => Promise<T>): Promise<T> {
  const undos: (() => Promise<unknown>)[] = [];
  try {
    return await body((undo) => undos.push(undo));
  } catch (error) {
    const failures: unknown[] = [];
    for (const undo of undos.reverse()) {
      try {
        await undo();
      } catch (undoError) {
        failures.push(undoError);
      }
    }
    if (failures.length > 0 && error instanceof Error) {
      error.message += ` (and undoing the earlier steps failed: ${failures.map((f) => (f instanceof Error ? f.message : String(f))).join("; ")})`;
    }
    throw error;
  }
}
