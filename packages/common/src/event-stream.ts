/**
 * Turns work that reports events through a callback into an async generator
 * of those events (for a server-streaming RPC handler): events are yielded
 * in order as the client reads them, and the generator returns the work's
 * result (`const result = yield* eventStream(…)`) or throws its error.
 * `replaces(last, next)` lets a newer event take the place of a pending one
 * the client has not read yet (byte progress, say), so a slow reader never
 * makes the queue grow without bound.
 */
export async function* eventStream<E, R>(
  run: (emit: (event: E) => void) => Promise<R>,
  replaces?: (pending: E, next: E) => boolean,
): AsyncGenerator<E, R> {
  const queue: E[] = [];
  let wake: (() => void) | undefined;
  let outcome: { value: R } | { error: unknown } | undefined;
  const emit = (event: E) => {
    const last = queue.at(-1);
    if (last !== undefined && replaces?.(last, event)) queue[queue.length - 1] = event;
    else queue.push(event);
    wake?.();
  };
  void run(emit).then(
    (value) => {
      outcome = { value };
      wake?.();
    },
    (error: unknown) => {
      outcome = { error };
      wake?.();
    },
  );
  for (;;) {
    while (queue.length > 0) yield queue.shift() as E;
    if (outcome) break;
    await new Promise<void>((resolve) => (wake = resolve));
    wake = undefined;
  }
  if ("error" in outcome) throw outcome.error;
  return outcome.value;
}
