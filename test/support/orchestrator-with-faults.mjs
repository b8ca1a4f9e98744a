#!/usr/bin/env node
// bangerd with failure injection, for tests only (the installed bangerd has no way to turn it on):
// BANGER_FAIL_AFTER_STAGE=<stage>[,…] makes the named stages fail right after their work succeeded
// (see createOperations). The command line is bangerd's.
import { runOrchestrator } from "../../services/orchestrator/dist/run.js";

const failAfterStages = new Set((process.env.BANGER_FAIL_AFTER_STAGE ?? "").split(",").filter((s) => s !== ""));
await runOrchestrator({ args: process.argv.slice(2), failAfterStages });
