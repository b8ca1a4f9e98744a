/**
 * Image references, parsed with the rules of Docker's distribution/reference:
 *
 *   debian                       → registry-1.docker.io  library/debian  :latest
 *   docker.io/library/debian:12  → registry-1.docker.io  library/debian  :12
 *   ghcr.io/org/img@sha256:…     → ghcr.io               org/img         @sha256:…
 *   127.0.0.1:5000/x:tag         → 127.0.0.1:5000        x               :tag
 *
 * The first path component is a registry host when it contains "." or ":",
 * is "localhost", or has upper-case letters; otherwise the image lives on
 * Docker Hub, where one-component names get the "library/" prefix.
 */
import { InvalidArgumentError } from "../errors.js";

/** Where Docker Hub's registry API actually is. */
export const DOCKER_HUB_REGISTRY = "registry-1.docker.io";
/** How Docker Hub is spelled in canonical references. */
export const DOCKER_HUB_DOMAIN = "docker.io";
const DOCKER_HUB_ALIASES = new Set(["docker.io", "index.docker.io", "registry-1.docker.io"]);

export interface ImageReference {
  /** host[:port] the registry API is reached at, e.g. "registry-1.docker.io", "127.0.0.1:5000". */
  readonly registry: string;
  /** Repository path inside the registry, e.g. "library/debian". */
  readonly repository: string;
  /** Tag; "latest" when the text named neither a tag nor a digest. */
  readonly tag?: string;
  /** Manifest digest "sha256:<64 hex>"; when present it wins over the tag. */
  readonly digest?: string;
  /** Fully qualified text, e.g. "docker.io/library/debian:latest". */
  readonly canonical: string;
}

const MAX_NAME_LENGTH = 255;
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DIGEST_SYNTAX = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[A-Za-z0-9=_-]+$/;
const SHA256_DIGEST = /^sha256:[a-f0-9]{64}$/;
const HOST_LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$/;
const IPV6_HOST = /^\[[0-9A-Fa-f:.]+\]$/;
const PORT = /^[0-9]{1,5}$/;

function invalid(text: string, why: string): InvalidArgumentError {
  return new InvalidArgumentError(`invalid image reference ${JSON.stringify(text)}: ${why}`, {
    reason: "INVALID_REFERENCE",
  });
}

function checkHost(text: string, host: string): void {
  let name = host;
  const portAt = host.lastIndexOf(":");
  if (portAt !== -1 && !(host.startsWith("[") && host.endsWith("]"))) {
    const port = host.slice(portAt + 1);
    name = host.slice(0, portAt);
    if (!PORT.test(port) || Number(port) < 1 || Number(port) > 65535) {
      throw invalid(text, `bad port ${JSON.stringify(port)} in registry host`);
    }
  }
  const ok = IPV6_HOST.test(name) || (name.length > 0 && name.split(".").every((label) => HOST_LABEL.test(label)));
  if (!ok) throw invalid(text, `bad registry host ${JSON.stringify(host)}`);
}

/**
 * Parses `text` into an ImageReference. Throws InvalidArgumentError with
 * reason INVALID_REFERENCE saying what is wrong.
 */
export function parseReference(text: string): ImageReference {
  if (text.length === 0) throw invalid(text, "it is empty");
  if (/[\s\u0000-\u001f\u007f]/.test(text)) throw invalid(text, "it contains whitespace or control characters");

  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST_SYNTAX.test(digest)) throw invalid(text, `bad digest ${JSON.stringify(digest)}`);
    if (!digest.startsWith("sha256:")) {
      throw invalid(text, `unsupported digest algorithm ${JSON.stringify(digest.split(":")[0])} (only sha256)`);
    }
    if (!SHA256_DIGEST.test(digest)) throw invalid(text, "a sha256 digest is 64 lower-case hex characters");
  }

  let tag: string | undefined;
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) {
      throw invalid(text, `bad tag ${JSON.stringify(tag)} (letters, digits, "_", "." and "-", at most 128)`);
    }
  }

  const name = rest;
  if (name.length === 0) throw invalid(text, "the repository name is empty");
  if (name.length > MAX_NAME_LENGTH) throw invalid(text, `the name is longer than ${MAX_NAME_LENGTH} characters`);

  let domain = DOCKER_HUB_DOMAIN;
  let path = name;
  const slash = name.indexOf("/");
  if (slash !== -1) {
    const first = name.slice(0, slash);
    if (/[.:]/.test(first) || first === "localhost" || first.toLowerCase() !== first) {
      checkHost(text, first);
      domain = first.toLowerCase();
      path = name.slice(slash + 1);
    }
  }
  if (DOCKER_HUB_ALIASES.has(domain)) {
    domain = DOCKER_HUB_DOMAIN;
    if (!path.includes("/")) path = `library/${path}`;
  }
  for (const component of path.split("/")) {
    if (component.length === 0) throw invalid(text, "the repository name has an empty path component");
    if (component.toLowerCase() !== component) throw invalid(text, "repository names must be lower-case");
    if (!PATH_COMPONENT.test(component)) {
      throw invalid(
        text,
        `bad repository path component ${JSON.stringify(component)} (lower-case letters and digits, separated by ".", "_", "__" or "-")`,
      );
    }
  }

  if (tag === undefined && digest === undefined) tag = "latest";
  const canonical = `${domain}/${path}${tag === undefined ? "" : `:${tag}`}${digest === undefined ? "" : `@${digest}`}`;
  return {
    registry: domain === DOCKER_HUB_DOMAIN ? DOCKER_HUB_REGISTRY : domain,
    repository: path,
    ...(tag === undefined ? {} : { tag }),
    ...(digest === undefined ? {} : { digest }),
    canonical,
  };
}
