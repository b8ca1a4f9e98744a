import { describe, expect, it } from "vitest";
import { parseChallenge } from "./auth.js";
import { allowsPlainHttp } from "./http.js";

describe("parseChallenge", () => {
  it("reads Bearer and Basic challenges", () => {
    expect(
      parseChallenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull"',
      ),
    ).toEqual({ scheme: "bearer", realm: "https://auth.docker.io/token", service: "registry.docker.io" });
    expect(parseChallenge('bearer realm="https://r/t?x=1,y" , error="insufficient_scope"')).toEqual({
      scheme: "bearer",
      realm: "https://r/t?x=1,y",
    });
    expect(parseChallenge('Basic realm="Registry Realm"')).toEqual({ scheme: "basic" });
  });

  it("ignores what it cannot use", () => {
    expect(parseChallenge(null)).toBeUndefined();
    expect(parseChallenge('Bearer service="x"')).toBeUndefined();
    expect(parseChallenge("Negotiate abc")).toBeUndefined();
  });
});

describe("allowsPlainHttp", () => {
  const none = new Set<string>();
  it("allows loopback hosts only, unless a host is listed", () => {
    for (const host of ["127.0.0.1:5000", "127.1.2.3", "localhost", "localhost:5000", "[::1]:5000", "[0:0::1]"]) {
      expect(allowsPlainHttp(host, none), host).toBe(true);
    }
    for (const host of ["128.0.0.1", "127.0.0.1.example.com", "localhost.example.com", "[::2]", "registry.lan:5000"]) {
      expect(allowsPlainHttp(host, none), host).toBe(false);
    }
    expect(allowsPlainHttp("registry.lan:5000", new Set(["registry.lan:5000"]))).toBe(true);
    expect(allowsPlainHttp("registry.lan:5001", new Set(["registry.lan:5000"]))).toBe(false);
    expect(allowsPlainHttp("registry.lan:5001", new Set(["registry.lan"]))).toBe(true);
  });
});
