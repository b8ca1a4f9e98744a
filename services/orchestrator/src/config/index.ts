export {
  CONFIG_LIMITS,
  CONFIG_REFERENCE,
  ConfigError,
  DEFAULT_CONFIG,
  defaultConfigDir,
  defaultConfigPath,
  describeConfig,
  loadConfig,
  parseConfig,
  type BangerConfig,
  type ConfigKeyDoc,
  type ConfigProblem,
  type ConfigValues,
  type FileSyncEntry,
  type VmmDriver,
  type VmmSetting,
} from "./config.js";
export { ensureSshIdentity, readSshIdentity, sshIdentityPaths, type SshIdentity } from "./ssh-identity.js";
