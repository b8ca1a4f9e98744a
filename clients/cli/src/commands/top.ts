import type { Command } from "commander";
import type { GlobalOptions } from "../context.js";
import { UsageError } from "../errors.js";
import { snapshotText } from "../render/top-view.js";
import { gatherTop } from "../top/gather.js";
import { withOrchestrator } from "./op.js";

/** `banger top`. */
export function registerTopCommand(top: Command, globals: () => GlobalOptions): void {
  top.action(async (opts: { interval?: string; once?: boolean }) => {
    const interval = Number(opts.interval ?? "2");
    if (!Number.isFinite(interval) || interval < 1 || interval > 3600) {
      throw new UsageError(`--interval must be 1-3600 seconds, got ${opts.interval}`);
    }
    const dumb = !process.stdout.isTTY || !process.stdin.isTTY || process.env["TERM"] === "dumb";
    if (dumb || opts.once) {
      await withOrchestrator(globals(), async (o) => {
        process.stdout.write(snapshotText(await gatherTop(o), new Date()));
      });
      return;
    }
    // The TUI library is loaded only here: the snapshot (and every other command) does without it.
    const { runTopTui } = await withoutCiVariables(() => import("../top/tui.js"));
    await runTopTui(globals(), interval * 1000);
  });
}

/**
 * ink decides once, as it loads, whether it runs under CI (`CI` or `CONTINUOUS_INTEGRATION` set) and there
 * draws nothing until it exits. Here stdin and stdout are a terminal and the user asked for the screen, so
 * those variables are hidden while ink loads and put back at once (the commands top runs still see them).
 */
async function withoutCiVariables<T>(load: () => Promise<T>): Promise<T> {
  const saved = new Map<string, string>();
  for (const name of ["CI", "CONTINUOUS_INTEGRATION"]) {
    const value = process.env[name];
    if (value === undefined) continue;
    saved.set(name, value);
    delete process.env[name];
  }
  try {
    return await load();
  } finally {
    for (const [name, value] of saved) process.env[name] = value;
  }
}
