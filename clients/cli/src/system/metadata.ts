/**
 * Install metadata (`/etc/banger/install.json`): who banger was installed
 * for, where its code and files are, and what `install` wrote, so that
 * `status`, `restart`, `uninstall` and the next `install` (an upgrade) know.
 */
import { readFileSync } from "node:fs";

export const METADATA_FORMAT = 1;

export interface InstallMetadata {
  readonly format: number;
  /** banger version installed, e.g. "0.1.0". */
  readonly version: string;
  /** ISO 8601 time of the install (or the last upgrade). */
  readonly installedAt: string;
  readonly owner: { readonly user: string; readonly uid: number; readonly gid: number; readonly home: string };
  /** The `banger` group and the puller's user, with their ids at install time. */
  readonly accounts: {
    readonly group: string;
    readonly gid: number;
    readonly pullerUser: string;
    readonly pullerUid: number;
    readonly pullerGid: number;
  };
  /** The code the units run: `<codeDir>/services/<service>/dist/bundle/main.js` with `node`. */
  readonly code: { readonly dir: string; readonly node: string };
  readonly firecracker: string;
  readonly paths: {
    readonly runtimeDir: string;
    readonly stateDir: string;
    readonly cacheDir: string;
    readonly sockets: {
      readonly orchestrator: string;
      readonly privileged: string;
      readonly imagePuller: string;
    };
  };
  /** Unit files installed, by name. */
  readonly units: readonly string[];
  /** Every other file install wrote (system paths): removed by uninstall. */
  readonly files: readonly string[];
}

/** The metadata at `file`, or undefined when there is none; a file that is not banger's is an error. */
export function readMetadata(file: string): InstallMetadata | undefined {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new Error(`${file} is not JSON; remove it if banger is not installed`);
  }
  const metadata = parsed as Partial<InstallMetadata>;
  if (metadata.format !== METADATA_FORMAT || typeof metadata.owner?.uid !== "number") {
    throw new Error(`${file} is not banger install metadata of format ${METADATA_FORMAT}`);
  }
  return metadata as InstallMetadata;
}

export function metadataJson(metadata: InstallMetadata): string {
  return JSON.stringify(metadata, null, 2) + "\n";
}
