/** The cancellation and deadline of the call that started some work; passed down to every outbound call. */
export interface CallScope {
  readonly signal: AbortSignal;
  /** Milliseconds left before the caller's deadline, when it set one. */
  readonly timeoutMs?: number | undefined;
}
