// Bundles the CLI into one ESM file so `banger` starts fast (no tsx, no module resolution at run time).
import { build } from "esbuild";

await build({
  entryPoints: { banger: new URL("./src/banger.ts", import.meta.url).pathname },
  outdir: new URL("./dist", import.meta.url).pathname,
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  sourcemap: true,
  logLevel: "warning",
  // Some bundled CommonJS dependencies call require(); give the ESM bundle one.
  banner: {
    js: "import { createRequire as __bangerRequire } from 'node:module'; const require = __bangerRequire(import.meta.url);",
  },
});
