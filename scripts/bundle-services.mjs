// Bundles each service's entry point into one ESM file, services/<service>/dist/bundle/main.js, which is what the
// systemd units, `banger dev up`, the tests and the benches run. One file instead of a few hundred modules: node
// keeps one module record and one compiled script, so a service starts with ≈ 20 MB less resident memory and no
// module resolution at run time. tsc's per-module output stays beside it for the tests that import modules.
// Packages with a native part stay outside the bundle and load from node_modules as before.
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { build } from "esbuild";

const SERVICES = {
  orchestrator: ["better-sqlite3", "ssh2"],
  privileged: ["koffi"],
  "image-puller": [],
};

for (const [service, external] of Object.entries(SERVICES)) {
  const outdir = new URL(`../services/${service}/dist/bundle`, import.meta.url).pathname;
  rmSync(outdir, { recursive: true, force: true });
  const { metafile } = await build({
    entryPoints: { main: new URL(`../services/${service}/src/main.ts`, import.meta.url).pathname },
    outdir,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    sourcemap: true,
    logLevel: "warning",
    external,
    metafile: true,
    // Some bundled CommonJS dependencies call require(); give the bundle one.
    banner: {
      js: "import { createRequire as __bangerRequire } from 'node:module'; const require = __bangerRequire(import.meta.url);",
    },
  });
  // esbuild escapes every non-ASCII character of the code (charset "ascii") but keeps the doc comments it
  // carries as they are, and one "…" in one of them made V8 hold the whole source as UTF-16: bangerd's 1.65 MB
  // bundle took 3.3 MB of its heap for as long as it ran. What is left outside ASCII is in comments, so each
  // UTF-16 unit of it becomes "?" (columns, and so the source map, stay as they were).
  const bundle = `${outdir}/main.js`;
  const text = readFileSync(bundle, "utf8");
  if (/[\u0080-\uffff]/.test(text)) writeFileSync(bundle, text.replace(/[\u0080-\uffff]/g, "?"));
  // Which source files went in: the helper's imports test reads it (no registry code in root's bundle).
  writeFileSync(`${outdir}/inputs.json`, JSON.stringify(Object.keys(metafile.inputs).sort(), null, 1) + "\n");
}
