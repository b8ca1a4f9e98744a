import { describe, expect, it } from "vitest";
import { debugfsErrors, debugfsSections, parseDebugfsStat } from "./debugfs.js";

// What debugfs 1.47 prints for `stat /a` (a file of uid -2 as debugfs shows it) and a missing path.
const OUTPUT = [
  "debugfs: stat /a",
  "Inode: 12   Type: regular    Mode:  0640   Flags: 0x80000",
  "Generation: 0    Version: 0x00000000:00000000",
  "User: -2   Group:  1000   Project:     0   Size: 5",
  "debugfs: stat /missing",
  "",
].join("\n");

describe("debugfs output", () => {
  it("splits by command and reads type, mode, owner (unsigned) and size", () => {
    const sections = debugfsSections(OUTPUT);
    expect([...sections.keys()]).toEqual(["stat /a", "stat /missing"]);
    expect(parseDebugfsStat(sections.get("stat /a") ?? "")).toEqual({
      type: "regular",
      mode: 0o640,
      uid: 4294967294,
      gid: 1000,
      size: 5,
    });
    expect(parseDebugfsStat(sections.get("stat /missing") ?? "")).toBeUndefined();
  });

  it("keeps debugfs's complaints without its banner, the last five", () => {
    const stderr = ["debugfs 1.47.0 (5-Feb-2023)", ...Array.from({ length: 7 }, (_, i) => `error ${i}`), ""].join("\n");
    expect(debugfsErrors(stderr)).toBe(": error 2; error 3; error 4; error 5; error 6");
    expect(debugfsErrors("debugfs 1.47.0 (5-Feb-2023)\n")).toBe("");
  });
});
