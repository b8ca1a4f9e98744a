#!/usr/bin/env node
// Which files an entry point loads: runs `node <entry> <args...>` with a module load hook that
// records every file the module graph loads, and prints them relative to the repository, sorted,
// one a line (files outside it as they are). Give arguments that make the entry exit at once (an
// unknown option): every static import is loaded before the entry's own code runs.
//
//   node scripts/loaded-modules.mjs services/privileged/dist/main.js --no-such-option
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const [entry, ...args] = process.argv.slice(2);
if (entry === undefined) {
  console.error("usage: node scripts/loaded-modules.mjs <entry.js> [args...]");
  process.exit(2);
}
const dir = mkdtempSync(join(tmpdir(), "banger-modules-"));
try {
  const out = join(dir, "loaded");
  writeFileSync(out, "");
  writeFileSync(
    join(dir, "hooks.mjs"),
    `import { appendFileSync } from "node:fs";
export async function load(url, context, next) {
  if (url.startsWith("file:")) appendFileSync(${JSON.stringify(out)}, url + "\\n");
  return next(url, context);
}
`,
  );
  writeFileSync(
    join(dir, "register.mjs"),
    `import { register } from "node:module";
register(${JSON.stringify(pathToFileURL(join(dir, "hooks.mjs")).href)});
`,
  );
  spawnSync(process.execPath, ["--import", pathToFileURL(join(dir, "register.mjs")).href, entry, ...args], {
    cwd: root,
    stdio: "ignore",
  });
  const files = new Set(
    readFileSync(out, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((url) => {
        const path = fileURLToPath(url);
        const inRepo = relative(root, path);
        return inRepo.startsWith("..") ? path : inRepo;
      }),
  );
  for (const file of [...files].sort()) console.log(file);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
