/**
 * bangerd: parses its arguments, loads the configuration, opens the store and
 * serves the orchestrator until stopped. main.ts runs it as installed; a test
 * entry (test/support/orchestrator-with-faults.mjs) runs it with failure
 * injection, which nothing installed can turn on.
 */
import { parseArgs } from "node:util";
import { mkdir } from "node:fs/promises";
import { homedir } from "node:os";
import {
  DEFAULT_RUNTIME_DIR,
  DEFAULT_STATE_DIR,
  clearStaleSocket,
  createLogger,
  endLog,
  runService,
  runtimeLayout,
  stateLayout,
} from "@banger/common";
import { createOrchestrator, type Orchestrator } from "./app.js";
import { ConfigError, defaultConfigPath, loadConfig } from "./config/index.js";
import { openStore, type Store } from "./store/index.js";

export interface RunOptions {
  /** The command line after the program name. */
  readonly args: readonly string[];
  /** Stages that fail right after their work (tests only; see createOperations). */
  readonly failAfterStages?: ReadonlySet<string>;
  /** Stages that wait this many ms before their work (tests only; see createOperations). */
  readonly delayStages?: ReadonlyMap<string, number>;
}

export async function runOrchestrator(options: RunOptions): Promise<void> {
  const { values } = parseArgs({
    options: {
      "runtime-dir": { type: "string", default: DEFAULT_RUNTIME_DIR },
      "state-dir": { type: "string", default: DEFAULT_STATE_DIR },
      socket: { type: "string" },
      "privileged-socket": { type: "string" },
      "puller-socket": { type: "string" },
      config: { type: "string" },
    },
    args: [...options.args],
    strict: true,
  });

  const layout = runtimeLayout(values["runtime-dir"]);
  const socketPath = values.socket ?? layout.orchestratorSocket;
  const logger = createLogger({ service: "orchestrator" });

  const { failAfterStages, delayStages } = options;
  if (failAfterStages?.size) logger.warn({ stages: [...failAfterStages] }, "failure injection is on");
  if (delayStages?.size) logger.warn({ stages: Object.fromEntries(delayStages) }, "delay injection is on");

  let store: Store;
  let orchestrator: Orchestrator;
  try {
    const home = homedir();
    const config = await loadConfig({ path: values.config ?? defaultConfigPath(process.env, home), home });
    logger.info({ config: config.source.path, exists: config.source.exists }, "configuration loaded");
    // Refuse to run over a live instance before touching its database (recovery would
    // mark that instance's running operations interrupted).
    await clearStaleSocket(socketPath);
    await mkdir(values["state-dir"], { recursive: true, mode: 0o700 });
    store = await openStore(stateLayout(values["state-dir"]).database);
    orchestrator = await createOrchestrator({
      socketPath,
      privilegedSocket: values["privileged-socket"] ?? layout.privilegedSocket,
      pullerSocket: values["puller-socket"] ?? layout.pullerSocket,
      db: store.db,
      logger,
      stateDir: values["state-dir"],
      runtimeDir: values["runtime-dir"],
      config,
      ...(failAfterStages?.size ? { failAfterStages } : {}),
      ...(delayStages?.size ? { delayStages } : {}),
    });
  } catch (error) {
    const problems = error instanceof ConfigError ? { problems: error.problems } : {};
    logger.fatal({ err: error, ...problems }, `orchestrator failed to start: ${(error as Error).message}`);
    // The log is written asynchronously: the line that says why goes out before the process ends.
    await endLog(logger);
    return process.exit(1);
  }

  await runService({
    service: "orchestrator",
    logger,
    socketPath,
    mode: 0o600,
    files: orchestrator.files,
    routes: orchestrator.routes,
    onStop: async () => {
      await orchestrator.stop();
      await store.close();
    },
  });
}
