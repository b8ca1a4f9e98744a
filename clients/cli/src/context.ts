import { DEFAULT_RUNTIME_DIR, mintOpId, runtimeLayout } from "@banger/common";

/** Options every command accepts. */
export interface GlobalOptions {
  readonly socket?: string;
}

/**
 * The orchestrator's socket: `--socket`, then `BANGER_SOCKET`, then
 * `$BANGER_RUNTIME_DIR/orchestrator.sock`, then the system default.
 */
export function resolveOrchestratorSocket(options: GlobalOptions, env: NodeJS.ProcessEnv = process.env): string {
  if (options.socket) return options.socket;
  if (env["BANGER_SOCKET"]) return env["BANGER_SOCKET"];
  return runtimeLayout(env["BANGER_RUNTIME_DIR"] || DEFAULT_RUNTIME_DIR).orchestratorSocket;
}

/**
 * The op id of this command. The CLI mints it and sends it (the orchestrator
 * adopts it), so even a command that cannot reach the orchestrator has one.
 */
export const commandOpId = mintOpId();
