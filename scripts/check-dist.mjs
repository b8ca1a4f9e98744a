// Fails when a package's build output (what `npm run build` emits into dist/ and an install runs)
// holds test-only code: compiled tests (*.test.*), test support (*test-support*, testing/,
// test-support/, test-fixtures/) or any module that imports a test runner. Run by `npm run lint`.
// Tests and their support live in src/**/*.test.ts and <package>/test-support/, which every
// package's tsconfig.json leaves out; test/tsconfig.json type-checks them.
import { readdirSync, readFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "..");
const WORKSPACES = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).workspaces;

const TEST_NAME = /\.test\.|test-support|(^|\/)(testing|test-fixtures|__fixtures__|__mocks__)\//;
const TEST_RUNNER_IMPORT = /\bfrom\s*["'](vitest|@vitest\/[^"']*|node:test)["']|\bimport\(\s*["']vitest["']\)/;

/** Every file under `dir`, or none if it does not exist. */
function filesUnder(dir) {
  try {
    return readdirSync(dir, { recursive: true, withFileTypes: true })
      .filter((entry) => entry.isFile())
      .map((entry) => join(entry.parentPath, entry.name));
  } catch (error) {
    if (error.code === "ENOENT") return [];
    throw error;
  }
}

const offenders = [];
let checked = 0;
for (const workspace of WORKSPACES) {
  const dist = join(ROOT, workspace, "dist");
  for (const file of filesUnder(dist)) {
    checked += 1;
    const inDist = relative(dist, file);
    if (TEST_NAME.test(inDist)) offenders.push(`${relative(ROOT, file)}: test-only by its name`);
    else if (/\.(c|m)?js$/.test(file) && TEST_RUNNER_IMPORT.test(readFileSync(file, "utf8"))) {
      offenders.push(`${relative(ROOT, file)}: imports a test runner`);
    }
  }
}

if (offenders.length > 0) {
  console.error(`dist holds ${offenders.length} test-only file(s):\n  ${offenders.join("\n  ")}`);
  console.error(
    "tests belong in src/**/*.test.ts and support in <package>/test-support/ (both outside the build); " +
      "a dist/ from an older build may keep stale files: npm run clean && npm run build",
  );
  process.exit(1);
}
console.log(`dist: ${checked} files in ${WORKSPACES.length} workspaces, none test-only`);
