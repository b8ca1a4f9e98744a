// Typed lint for every workspace, plain lint for the .mjs scripts (the fake
// VMM, bench/, e2e support, the CLI bundler). Boundaries: core code stays
// proto-free, no service imports another service's code, and host programs
// start only in the host runners.
import js from "@eslint/js";
import globals from "globals";
import tseslint from "typescript-eslint";
import importPlugin from "eslint-plugin-import";

/**
 * The modules that may start processes: packages/common's host runner (every
 * service's and the CLI's tools: runProcess, streamProcess, runAttached), the
 * helper's launcher of VMMs (detached in their own session, stdio on files),
 * and the CLI's `banger system` host (synchronous, step by step, as root).
 */
const HOST_RUNNERS = [
  "packages/common/src/host-runner.ts",
  "services/privileged/src/host/proc.ts",
  "clients/cli/src/system/host.ts",
];
/** Tests and their support start real programs (registries, sshd, mkfs) as they like. */
const TEST_CODE = ["**/*.test.ts", "**/test-support/**"];
/**
 * The TypeScript projects typed rules read: each package's build (src/ without its tests) and
 * test/tsconfig.json, which holds every test and test-support file (outside any build).
 */
const TS_PROJECTS = [
  "gen/tsconfig.json",
  "packages/*/tsconfig.json",
  "services/*/tsconfig.json",
  "clients/*/tsconfig.json",
  "test/tsconfig.json",
];
const childProcessMessage =
  "start host programs through @banger/common's host runner (runProcess, streamProcess, runAttached); see eslint.config.js HOST_RUNNERS";

const REASON_LITERAL =
  "compare with the reason's constant (CommonReason, SharedReason or the service's), not a literal";
/** Reasons are typed: never cast into the union, a peer's rebuilt only in error-mapping.ts, compared by constant. */
const REASON_RULES = [
  {
    selector: "Property[key.name='reason'] > TSAsExpression",
    message: "a reason is one of the build's typed reasons (reasons.ts), never cast",
  },
  {
    selector: "Property[key.name='receivedReason']",
    message: "only error-mapping.ts rebuilds a peer's error with its reason; throw with `reason:`",
  },
  {
    selector: "BinaryExpression[operator=/^[!=]==$/][left.property.name='reason'][right.type='Literal']",
    message: REASON_LITERAL,
  },
  {
    selector: "BinaryExpression[operator=/^[!=]==$/][right.property.name='reason'][left.type='Literal']",
    message: REASON_LITERAL,
  },
  {
    selector: "SwitchStatement[discriminant.property.name='reason'] > SwitchCase[test.type='Literal']",
    message: REASON_LITERAL,
  },
];
/** An installed service reads no BANGER_ variable but the operator's log level: tests inject their hooks. */
const ENV_RULES = [
  "MemberExpression[object.object.name='process'][object.property.name='env'][property.value=/^BANGER_(?!LOG_LEVEL$)/]",
  "MemberExpression[object.object.name='process'][object.property.name='env'][property.name=/^BANGER_(?!LOG_LEVEL$)/]",
].map((selector) => ({
  selector,
  message: "an installed service reads no BANGER_ variable but BANGER_LOG_LEVEL: tests inject hooks",
}));

export default tseslint.config(
  { ignores: ["**/dist/**", "gen/**", "node_modules/**", "vitest.config.ts", ".bench/**"] },
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { project: TS_PROJECTS, tsconfigRootDir: import.meta.dirname },
    },
    plugins: { import: importPlugin },
    settings: {
      "import/parsers": { "@typescript-eslint/parser": [".ts"] },
      "import/extensions": [".ts"],
      "import/resolver": { typescript: { project: TS_PROJECTS } },
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
  // packages/common); core/ and store/ are proto-free (map at the rpc/ edge).
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
      message: "core/ and store/ are proto-free: map at the rpc/ edge",
    };
    // The root helper loads only what it runs: common through its subpath entry points, never the root index
    // (which pulls in the registry and credential-helper code); test code may use the root. The puller too, and the
    // CLI, whose bundle would otherwise load and evaluate all of common (pino included) at every start.
    const subpathsOnly = dir === "services/privileged" || dir === "services/image-puller" || dir === "clients/cli";
    const commonRoot = {
      name: "@banger/common",
      message: "this package imports common through its subpaths (@banger/common/errors, …) only",
    };
    return [
      { files: [`${dir}/**/*.ts`], rules: { "no-restricted-imports": ["error", { patterns: [others] }] } },
      ...(subpathsOnly
        ? [
            {
              files: [`${dir}/src/**/*.ts`],
              ignores: TEST_CODE,
              rules: { "no-restricted-imports": ["error", { patterns: [others], paths: [commonRoot] }] },
            },
          ]
        : []),
      {
        files: [`${dir}/src/core/**/*.ts`, `${dir}/src/store/**/*.ts`],
        rules: {
          "no-restricted-imports": [
            "error",
            { patterns: [others, protoFree], ...(subpathsOnly ? { paths: [commonRoot] } : {}) },
          ],
        },
      },
    ];
  }),
  // node:child_process only in the host runners.
  {
    files: ["packages/*/src/**/*.ts", "services/*/src/**/*.ts", "clients/*/src/**/*.ts"],
    ignores: [...HOST_RUNNERS, ...TEST_CODE],
    rules: {
      "@typescript-eslint/no-restricted-imports": [
        "error",
        {
          paths: [
            { name: "node:child_process", message: childProcessMessage },
            { name: "child_process", message: childProcessMessage },
          ],
        },
      ],
    },
  },
  // Error reasons are typed (packages/common/src/reasons.ts): a reason is never cast into the union, a
  // peer's reason is rebuilt only in error-mapping.ts, and a comparison names the reason's constant.
  // Installed services take no test hook from their environment (tests inject hooks through their
  // own entry points, e.g. test/support/orchestrator-with-faults.mjs); the one BANGER_ variable they
  // read is the operator's log level.
  {
    files: ["packages/*/src/**/*.ts", "services/*/src/**/*.ts"],
    ignores: [...TEST_CODE, "packages/common/src/error-mapping.ts"],
    rules: { "no-restricted-syntax": ["error", ...REASON_RULES, ...ENV_RULES] },
  },
  {
    files: ["clients/*/src/**/*.ts"],
    ignores: TEST_CODE,
    rules: { "no-restricted-syntax": ["error", ...REASON_RULES] },
  },
  {
    files: ["packages/common/src/error-mapping.ts"],
    rules: { "no-restricted-syntax": ["error", ...ENV_RULES] },
  },
  // Scripts in plain JavaScript run on Node: no type information, Node's globals.
  {
    files: ["**/*.mjs", "**/*.js"],
    extends: [js.configs.recommended, tseslint.configs.disableTypeChecked],
    languageOptions: { globals: globals.node },
    rules: { "no-unused-vars": "off" }, // @typescript-eslint/no-unused-vars says it, with the `_` exception
  },
);
