export { defaultConfigDir, defaultConfigPath, loadConfig } from "./config.js";
export { parseConfig } from "./parse.js";
export {
  CONFIG_LIMITS,
  CONFIG_REFERENCE,
  ConfigError,
  DEFAULT_CONFIG,
  describeConfig,
  type BangerConfig,
  type ConfigKeyDoc,
  type ConfigProblem,
  type ConfigValues,
  type FileSyncEntry,
  type VmmDriver,
  type VmmSetting,
} from "./schema.js";
export { ensureSshIdentity, readSshIdentity, sshIdentityPaths, type SshIdentity } from "./ssh-identity.js";
