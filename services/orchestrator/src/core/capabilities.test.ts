import type { BangerError } from "@banger/common";
import { describe, expect, it } from "vitest";
import { orderCapabilities, type Capability } from "./capabilities.js";

const cap = (name: string, dependsOn: string[] = []): Capability => ({ name, dependsOn });

describe("capabilities", () => {
  it("come in an order where each follows what it depends on", () => {
    const ordered = orderCapabilities([cap("nat", ["dns"]), cap("dns", ["work-disk"]), cap("work-disk")]);
    expect(ordered.map((c) => c.name)).toEqual(["work-disk", "dns", "nat"]);
  });

  it("refuse a dependency that does not exist, and a cycle, naming them", () => {
    const reason = (list: Capability[]) => {
      try {
        orderCapabilities(list);
        return "none";
      } catch (error) {
        return `${(error as BangerError).reason}: ${(error as Error).message}`;
      }
    };
    expect(reason([cap("nat", ["firewall"])])).toBe(
      "CAPABILITY_MISSING: capability nat depends on firewall, which does not exist",
    );
    expect(reason([cap("a", ["b"]), cap("b", ["a"])])).toBe(
      "CAPABILITY_CYCLE: capabilities depend on each other in a cycle: a → b → a",
    );
  });
});
