import { existsSync } from "node:fs";
import { DEFAULT_RUNTIME_DIR, runtimeLayout } from "@banger/common/layout";
import { mintOpId } from "@banger/common/op-id";
import { devRuntimeDirsOf } from "./dev-dirs.js";

/** Options every command accepts. */
export interface GlobalOptions {
  readonly socket?: string;
  /** `--timeout`: the deadline of each unary call and the idle deadline of streams (a duration: 1s, 500ms, 2m). */
  readonly timeout?: string;
}

/**
 * The orchestrator's socket: `--socket`, then `BANGER_SOCKET`, then `$BANGER_RUNTIME_DIR/orchestrator.sock`;
 * with none of them, the first that exists of the installed one (/run/banger) and those of a `dev up` for
 * the calling uid (dev-dirs.ts: `/run/banger-dev/<uid>`, then `$XDG_RUNTIME_DIR/banger-dev`); with none
 * there, the installed one (which the error then names).
 */
export function resolveOrchestratorSocket(
  options: GlobalOptions,
  env: NodeJS.ProcessEnv = process.env,
  uid: number | undefined = process.getuid?.(),
): string {
  if (options.socket) return options.socket;
  if (env["BANGER_SOCKET"]) return env["BANGER_SOCKET"];
  if (env["BANGER_RUNTIME_DIR"]) return runtimeLayout(env["BANGER_RUNTIME_DIR"]).orchestratorSocket;
  const installed = runtimeLayout(DEFAULT_RUNTIME_DIR).orchestratorSocket;
  if (uid === undefined || existsSync(installed)) return installed;
  const dev = devRuntimeDirsOf(uid, env)
    .map((dir) => runtimeLayout(dir).orchestratorSocket)
    .find((socket) => existsSync(socket));
  return dev ?? installed;
}

/**
 * The op id of this command. The CLI mints it and sends it (the orchestrator
 * adopts it), so even a command that cannot reach the orchestrator has one.
 */
export const commandOpId = mintOpId();
