/**
 * Image references and registry credentials: the puller uses them to talk to
 * registries; the orchestrator, as the owner, reads the owner's docker config
 * and credential helpers and hands the puller what it found.
 */
export { abortError } from "./abort.js";
export { createProcessCredentialHelper, type ProcessCredentialHelperOptions } from "./credential-helper.js";
export {
  defaultDockerConfigPath,
  DOCKER_HUB_SERVER_URL,
  findCredentials,
  hostOfKey,
  type CredentialHelper,
  type Credentials,
  type HelperCredentials,
} from "./credentials.js";
export { DOCKER_HUB_DOMAIN, DOCKER_HUB_REGISTRY, parseReference, type ImageReference } from "./reference.js";
