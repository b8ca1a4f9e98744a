import { describe, expect, it } from "vitest";
import { UsageError } from "../errors.js";
import { parsePortSpec, publishedPortOf } from "./vm-port.js";

describe("a published port's spec", () => {
  it("reads docker's -p spelling: [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]", () => {
    expect(publishedPortOf("8080:80")).toEqual({ hostIp: "", hostPort: 8080, guestPort: 80, protocol: "tcp" });
    expect(publishedPortOf("127.0.0.1:5353:53/udp")).toEqual({
      hostIp: "127.0.0.1",
      hostPort: 5353,
      guestPort: 53,
      protocol: "udp",
    });
  });

  it("takes a host port alone for rm, and ignores a guest port there", () => {
    expect(parsePortSpec("8080", false)).toMatchObject({ hostIp: "", hostPort: 8080, protocol: "tcp" });
    expect(parsePortSpec("10.0.0.1:8080:80/udp", false)).toMatchObject({ hostIp: "10.0.0.1", protocol: "udp" });
  });

  it.each(["8080", "http:80", "8080:80/sctp", ":80", "8080:80:90", "[::1]:80:80", "1.2.3:80:80", ""])(
    "refuses %j as a usage error (exit 2), before asking bangerd",
    (spec) => {
      expect(() => publishedPortOf(spec)).toThrow(UsageError);
    },
  );
});
