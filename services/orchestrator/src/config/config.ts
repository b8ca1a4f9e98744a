/**
 * The orchestrator's configuration file: `$XDG_CONFIG_HOME/banger/config.toml`,
 * else `~/.config/banger/config.toml`. Every key is optional; a missing file means
 * all defaults. Problems (TOML syntax, unknown keys at any level, wrong types, bad
 * values) are all collected and thrown together as one `ConfigError`, one line per
 * problem: `<file>: <key.path>: <reason>`.
 *
 * This module finds and reads the file; schema.ts holds the keys, defaults and limits
 * (`CONFIG_REFERENCE`), parse.ts checks a file's text against them.
 */
import { readFile } from "node:fs/promises";
import { isAbsolute, join } from "node:path";
import { parseConfig } from "./parse.js";
import { ConfigError, DEFAULT_CONFIG, deepFreeze, type BangerConfig } from "./schema.js";

/** `$XDG_CONFIG_HOME/banger` (when set to an absolute path, as XDG requires), else `<home>/.config/banger`. */
export function defaultConfigDir(env: Readonly<Record<string, string | undefined>>, home: string): string {
  const xdg = env["XDG_CONFIG_HOME"];
  return join(xdg !== undefined && isAbsolute(xdg) ? xdg : join(home, ".config"), "banger");
}

/** `<config dir>/config.toml`; see defaultConfigDir. */
export function defaultConfigPath(env: Readonly<Record<string, string | undefined>>, home: string): string {
  return join(defaultConfigDir(env, home), "config.toml");
}

const MAX_FILE_BYTES = 1024 * 1024;

/**
 * Reads, checks and defaults the config file at `path`. `home` is the owner's home
 * (`~/` in paths; file_sync sources must be inside it). A missing file = defaults.
 * Throws ConfigError listing every problem.
 */
export async function loadConfig(options: { readonly path: string; readonly home: string }): Promise<BangerConfig> {
  const { path } = options;
  let text: string;
  try {
    const bytes = await readFile(path);
    if (bytes.length > MAX_FILE_BYTES) {
      throw new ConfigError([{ file: path, key: "(file)", reason: `larger than ${MAX_FILE_BYTES} bytes` }]);
    }
    text = bytes.toString("utf8");
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      return deepFreeze({ ...DEFAULT_CONFIG, source: { path, exists: false } });
    }
    const reason = `cannot be read: ${(error as Error).message}`;
    throw new ConfigError([{ file: path, key: "(file)", reason }], { cause: error });
  }
  return deepFreeze({ ...parseConfig(text, path, options.home), source: { path, exists: true } });
}
