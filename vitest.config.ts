import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

export default defineConfig({
  resolve: {
    // Test support lives outside every package's src/ (so no build ships it); tests reach common's
    // through this name, which test/tsconfig.json's paths resolve the same way.
    alias: {
      "@banger/common/testing": fileURLToPath(new URL("./packages/common/test-support/requires.ts", import.meta.url)),
    },
  },
  test: {
    include: [
      "{packages,services,clients}/*/src/**/*.test.ts",
      "test/unit/**/*.test.ts",
      "test/integration/**/*.test.ts",
      "test/e2e/**/*.test.ts",
    ],
    exclude: ["**/node_modules/**", "**/dist/**"],
    reporters: ["default", "./test/summary-reporter.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
