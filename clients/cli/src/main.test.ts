import { describe, expect, it } from "vitest";
import { hoistGlobals } from "./main.js";

describe("hoistGlobals", () => {
  it("moves --socket, and --timeout where the command has none of its own, before the command, up to --", () => {
    expect(hoistGlobals(["vm", "list", "--socket", "/s", "--timeout=1s", "--json"], false)).toEqual([
      "--socket",
      "/s",
      "--timeout=1s",
      "vm",
      "list",
      "--json",
    ]);
    // vm stop's --timeout is its own; the global one stays where it was given, before the command.
    expect(hoistGlobals(["--timeout", "2s", "vm", "stop", "x", "--timeout", "5", "--socket=/s"], true)).toEqual([
      "--socket=/s",
      "--timeout",
      "2s",
      "vm",
      "stop",
      "x",
      "--timeout",
      "5",
    ]);
    // After --, everything is the guest command's.
    expect(hoistGlobals(["vm", "exec", "box", "--", "tool", "--socket", "/s"], false)).toEqual([
      "vm",
      "exec",
      "box",
      "--",
      "tool",
      "--socket",
      "/s",
    ]);
  });
});
