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
    const { runTopTui } = await import("../top/tui.js");
    await runTopTui(globals(), interval * 1000);
  });
}
