import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "../errors.js";
import { parseReference } from "./reference.js";

const DIGEST = `sha256:${"ab".repeat(32)}`;

describe("parseReference", () => {
  it.each([
    ["debian", "registry-1.docker.io", "library/debian", "latest", undefined, "docker.io/library/debian:latest"],
    [
      "debian:bookworm",
      "registry-1.docker.io",
      "library/debian",
      "bookworm",
      undefined,
      "docker.io/library/debian:bookworm",
    ],
    ["docker.io/debian:12", "registry-1.docker.io", "library/debian", "12", undefined, "docker.io/library/debian:12"],
    [
      "docker.io/library/alpine",
      "registry-1.docker.io",
      "library/alpine",
      "latest",
      undefined,
      "docker.io/library/alpine:latest",
    ],
    ["index.docker.io/user/app:v1", "registry-1.docker.io", "user/app", "v1", undefined, "docker.io/user/app:v1"],
    ["user/app", "registry-1.docker.io", "user/app", "latest", undefined, "docker.io/user/app:latest"],
    ["ghcr.io/org/img@" + DIGEST, "ghcr.io", "org/img", undefined, DIGEST, "ghcr.io/org/img@" + DIGEST],
    ["ghcr.io/org/sub/img:1.0@" + DIGEST, "ghcr.io", "org/sub/img", "1.0", DIGEST, "ghcr.io/org/sub/img:1.0@" + DIGEST],
    ["127.0.0.1:5000/x:tag", "127.0.0.1:5000", "x", "tag", undefined, "127.0.0.1:5000/x:tag"],
    ["localhost/x", "localhost", "x", "latest", undefined, "localhost/x:latest"],
    ["localhost:5000/a/b", "localhost:5000", "a/b", "latest", undefined, "localhost:5000/a/b:latest"],
    ["[::1]:5000/img:v", "[::1]:5000", "img", "v", undefined, "[::1]:5000/img:v"],
    ["Registry.Example.com/img", "registry.example.com", "img", "latest", undefined, "registry.example.com/img:latest"],
    ["quay.io/a_b/c.d-e__f:V_1.2-x", "quay.io", "a_b/c.d-e__f", "V_1.2-x", undefined, "quay.io/a_b/c.d-e__f:V_1.2-x"],
  ])("%s", (text, registry, repository, tag, digest, canonical) => {
    const reference = parseReference(text);
    expect(reference).toEqual({
      registry,
      repository,
      ...(tag === undefined ? {} : { tag }),
      ...(digest === undefined ? {} : { digest }),
      canonical,
    });
  });

  it.each([
    ["", "empty"],
    ["Debian", "lower-case"],
    ["docker.io/Library/debian", "lower-case"],
    ["debian:", "bad tag"],
    ["debian:-x", "bad tag"],
    [`debian:${"a".repeat(129)}`, "bad tag"],
    ["debian@sha256:abc", "64 lower-case hex"],
    [`debian@sha256:${"AB".repeat(32)}`, "64 lower-case hex"],
    [`debian@sha512:${"ab".repeat(64)}`, "unsupported digest algorithm"],
    ["debian@", "bad digest"],
    ["ghcr.io//img", "empty path component"],
    ["ghcr.io/", "empty path component"],
    ["a/../b", "bad repository path component"],
    ["img-/x", "bad repository path component"],
    ["host:99999/x", "bad port"],
    ["bad_host.io/x", "bad registry host"],
    ["debian bookworm", "whitespace"],
    [`${"a".repeat(256)}`, "longer than 255"],
  ])("rejects %j (%s)", (text, why) => {
    let caught: unknown;
    try {
      parseReference(text);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(InvalidArgumentError);
    expect((caught as InvalidArgumentError).reason).toBe("INVALID_REFERENCE");
    expect((caught as InvalidArgumentError).message).toContain(why);
  });
});
