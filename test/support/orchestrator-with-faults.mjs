#!/usr/bin/env node
// bangerd with failure injection, for tests only (the installed bangerd has no way to turn it on):
// BANGER_FAIL_AFTER_STAGE=<stage>[,…] makes the named stages fail right after their work succeeded, and
// BANGER_DELAY_STAGE=<stage>:<ms>[,…] makes them wait that long before their work, a cancel not cutting the
// wait short (see createOperations). The command line is bangerd's.
import { runOrchestrator } from "../../services/orchestrator/dist/run.js";

const list = (name) => (process.env[name] ?? "").split(",").filter((s) => s !== "");
const failAfterStages = new Set(list("BANGER_FAIL_AFTER_STAGE"));
const delayStages = new Map(
  list("BANGER_DELAY_STAGE").map((entry) => [entry.split(":")[0], Number(entry.split(":")[1])]),
);
await runOrchestrator({ args: process.argv.slice(2), failAfterStages, delayStages });
