// Bundles the CLI into ESM so `banger` starts fast (no tsx, no module resolution at run time): dist/banger.js holds
// main.ts and commander; each top-level command's module, loaded by main.ts when that command runs, is its own chunk
// beside it (chunks shared between commands too), so a command loads and evaluates only what it uses.
import { existsSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { build } from "esbuild";

const outdir = new URL("./dist", import.meta.url).pathname;
// Chunks are named by their hash: the last build's would stay beside the new ones.
const previous = existsSync(outdir) ? readdirSync(outdir, { withFileTypes: true }) : [];
for (const entry of previous) {
  if (entry.isFile() && /\.js(\.map)?$/.test(entry.name)) rmSync(join(outdir, entry.name));
}

await build({
  entryPoints: { banger: new URL("./src/banger.ts", import.meta.url).pathname },
  outdir,
  bundle: true,
  splitting: true,
  platform: "node",
  format: "esm",
  target: "node20",
  sourcemap: true,
  logLevel: "warning",
  // ink (`banger top`) imports React's devtools only when DEV=true; never in banger, so left out of the bundle.
  external: ["react-devtools-core"],
  // React picks its production build (smaller, no development checks) by this.
  define: { "process.env.NODE_ENV": '"production"' },
  // Some bundled CommonJS dependencies call require(); give each ESM file one.
  banner: {
    js: "import { createRequire as __bangerRequire } from 'node:module'; const require = __bangerRequire(import.meta.url);",
  },
});
