/** The version of banger every service and the CLI report (kept equal to package.json's by a test). */
export const BANGER_VERSION = "0.1.0";
