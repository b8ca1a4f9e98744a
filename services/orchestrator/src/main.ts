#!/usr/bin/env node
// bangerd as installed: its command line only; nothing in its environment turns on a test hook.
import { runOrchestrator } from "./run.js";

await runOrchestrator({ args: process.argv.slice(2) });
