/** A probe's outcome that never rejects, and the shape of one check. */
import { BangerError, type ErrorKind } from "@banger/common";
import type { CheckStatus, DoctorCheck } from "../capabilities.js";

export const HELPER_DOWN = "not checked: the privileged helper is not reachable";

export type Settled<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: Failure };
export interface Failure {
  readonly message: string;
  readonly kind?: ErrorKind;
}

/** Runs `work` under its own deadline (and the call's cancellation); never rejects. */
export function settle<T>(
  outer: AbortSignal,
  timeoutMs: number,
  work: (signal: AbortSignal) => Promise<T>,
): Promise<Settled<T>> {
  const signal = AbortSignal.any([outer, AbortSignal.timeout(timeoutMs)]);
  return new Promise((resolve) => {
    const onAbort = () =>
      resolve({
        ok: false,
        error: outer.aborted
          ? { message: "cancelled", kind: "cancelled" }
          : { message: `no answer within ${timeoutMs / 1000} s`, kind: "deadline-exceeded" },
      });
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    // Through then(): a probe that throws at once is settled like one that rejects.
    void Promise.resolve()
      .then(() => work(signal))
      .then(
        (value) => resolve({ ok: true, value }),
        (error: unknown) =>
          resolve({
            ok: false,
            error:
              error instanceof BangerError
                ? { message: error.message, kind: error.kind }
                : { message: error instanceof Error ? error.message : String(error) },
          }),
      )
      .finally(() => signal.removeEventListener("abort", onAbort));
  });
}

export function settledValue<T>(settled: Settled<T> | undefined): T | undefined {
  return settled?.ok ? settled.value : undefined;
}

export const check = (name: string, status: CheckStatus, detail: string, hint = ""): DoctorCheck => ({
  name,
  status,
  detail,
  hint: status === "ok" ? "" : hint,
});
