// Typed lint for every workspace. Boundaries: core code stays proto-free, and
// no service imports another service's code.
import tseslint from "typescript-eslint";
import importPlugin from "eslint-plugin-import";

export default tseslint.config(
  { ignores: ["**/dist/**", "gen/**", "node_modules/**", "**/*.js", "**/*.mjs", "vitest.config.ts"] },
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    plugins: { import: importPlugin },
    settings: {
      "import/parsers": { "@typescript-eslint/parser": [".ts"] },
      "import/extensions": [".ts"],
      "import/resolver": { typescript: { project: ["*/*/tsconfig.json", "gen/tsconfig.json", "test/tsconfig.json"] } },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": "error",
      "@typescript-eslint/consistent-type-imports": ["error", { fixStyle: "inline-type-imports" }],
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "import/no-cycle": "error",
    },
  },
  // A service or client never imports another one's code (share through
  // packages/common); core/ is proto-free (map at the rpc/ edge).
  ...["services/orchestrator", "services/privileged", "services/image-puller", "clients/cli"].flatMap((dir) => {
    const others = {
      group: [
        "@banger/orchestrator",
        "@banger/privileged",
        "@banger/image-puller",
        "@banger/cli",
        "**/services/**",
        "**/clients/**",
      ],
      message: "a service or client never imports another one's code; share through packages/common",
    };
    const protoFree = {
      group: ["@banger/gen/*", "@connectrpc/*"],
      message: "core/ is proto-free: map at the rpc/ edge",
    };
    return [
      { files: [`${dir}/**/*.ts`], rules: { "no-restricted-imports": ["error", { patterns: [others] }] } },
      {
        files: [`${dir}/src/core/**/*.ts`],
        rules: { "no-restricted-imports": ["error", { patterns: [others, protoFree] }] },
      },
    ];
  }),
);
