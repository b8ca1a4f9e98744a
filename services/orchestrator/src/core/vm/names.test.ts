import { describe, expect, it } from "vitest";
import { validVmName } from "./model.js";
import { generateVmName } from "./names.js";

describe("generateVmName", () => {
  it("gives an adjective-noun name that is a valid VM name", async () => {
    const name = await generateVmName(() => Promise.resolve(false));
    expect(name).toMatch(/^[a-z]+-[a-z]+$/);
    expect(validVmName(name)).toBe(name);
  });

  it("draws again while the name is taken, then adds a suffix when the plain names keep colliding", async () => {
    // The same draw every time: the plain name is always taken, so a suffixed one comes.
    const asked: string[] = [];
    const name = await generateVmName(
      (candidate) => {
        asked.push(candidate);
        return Promise.resolve(!/-[0-9a-f]{4}$/.test(candidate));
      },
      () => 0,
    );
    expect(asked.slice(0, 16)).toEqual(Array(16).fill("amber-badger"));
    expect(name).toMatch(/^amber-badger-[0-9a-f]{4}$/);
    expect(validVmName(name)).toBe(name);
  });
});
