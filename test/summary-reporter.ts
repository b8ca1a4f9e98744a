import type { Reporter, TestModule } from "vitest/node";

/**
 * Ends every test run with one line CI and people can grep:
 * `412 passed, 0 failed` (`, 3 skipped` when some skip). A file that fails to
 * load, or whose hooks fail (its tests then show as skipped), counts as one
 * failure, so a run that ran nothing cannot look green.
 */
export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: readonly TestModule[], unhandledErrors: readonly unknown[]): void {
    let passed = 0;
    let failed = unhandledErrors.length;
    let skipped = 0;
    for (const module of testModules) {
      let failedHere = 0;
      for (const test of module.children.allTests()) {
        const state = test.result().state;
        if (state === "passed") passed++;
        else if (state === "failed") failedHere++;
        else skipped++;
      }
      failed += failedHere === 0 && module.state() === "failed" ? 1 : failedHere;
    }
    const line = `${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ""}`;
    process.stdout.write(`\n${line}\n`);
  }
}
