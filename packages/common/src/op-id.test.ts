import { describe, expect, it } from "vitest";
import { adoptOrMintOpId, currentOpId, isOpId, mintOpId, runWithOpId } from "./op-id.js";

describe("op ids", () => {
  it("mints op- plus 12 lowercase hex digits, different every time", () => {
    const ids = new Set(Array.from({ length: 1000 }, () => mintOpId()));
    expect(ids.size).toBe(1000);
    for (const id of ids) expect(id).toMatch(/^op-[0-9a-f]{12}$/);
  });

  it("adopts a well-formed inbound id", () => {
    expect(adoptOrMintOpId("op-0123456789ab")).toBe("op-0123456789ab");
    expect(adoptOrMintOpId(["op-aaaaaaaaaaaa", "op-bbbbbbbbbbbb"])).toBe("op-aaaaaaaaaaaa");
  });

  it.each([
    ["upper case", "op-0123456789AB"],
    ["too short", "op-0123"],
    ["too long", "op-0123456789abc"],
    ["wrong prefix", "id-0123456789ab"],
    ["injection attempt", 'op-0123456789ab\n{"level":"fatal"}'],
    ["empty", ""],
  ])("replaces a malformed inbound id (%s) with a fresh one", (_, inbound) => {
    const id = adoptOrMintOpId(inbound);
    expect(id).not.toBe(inbound);
    expect(isOpId(id)).toBe(true);
  });

  it("mints when there is no inbound id", () => {
    expect(isOpId(adoptOrMintOpId(undefined))).toBe(true);
    expect(isOpId(adoptOrMintOpId(null))).toBe(true);
  });

  it("keeps the id for the whole async call tree, and only there", async () => {
    expect(currentOpId()).toBeUndefined();
    const seen = await runWithOpId("op-00000000000a", async () => {
      await new Promise((r) => setTimeout(r, 5));
      const inner = await Promise.all([
        Promise.resolve().then(() => currentOpId()),
        runWithOpId("op-00000000000b", () => Promise.resolve(currentOpId())),
      ]);
      return [currentOpId(), ...inner];
    });
    expect(seen).toEqual(["op-00000000000a", "op-00000000000a", "op-00000000000b"]);
    expect(currentOpId()).toBeUndefined();
  });
});
