/**
 * A short in-process lock: the work passed to it runs one at a time, in
 * call order, whatever the previous one did (resolved or threw). Meant for
 * milliseconds of work (a rename and a row), never for slow stages.
 */
export function createSerialLock(): <T>(work: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(work: () => Promise<T>): Promise<T> => {
    const run = tail.then(work, work);
    tail = run.catch(() => undefined);
    return run;
  };
}
