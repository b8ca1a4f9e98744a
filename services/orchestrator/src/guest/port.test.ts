import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { readGitIdentity } from "./port.js";

const HAVE_GIT = requireTools("the owner's git identity", ["git"]).length === 0;

describe.skipIf(!HAVE_GIT)("the owner's git identity", () => {
  let home: string;
  beforeEach(() => (home = mkdtempSync(join(tmpdir(), "banger-home-"))));
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  it("is read from the owner's ~/.gitconfig, not the orchestrator's environment", async () => {
    writeFileSync(join(home, ".gitconfig"), '[user]\n\tname = Ada Lovelace\n\temail = "ada@example.org"\n');
    expect(await readGitIdentity(home)).toEqual({ name: "Ada Lovelace", email: "ada@example.org" });
  });

  it("takes the last value of a key set twice, as git config --get does", async () => {
    writeFileSync(
      join(home, ".gitconfig"),
      "[user]\n\tname = First\n\temail = a@example.org\n[User]\n\tName = Second Name\n",
    );
    expect(await readGitIdentity(home)).toEqual({ name: "Second Name", email: "a@example.org" });
  });

  it("is absent when the name or the e-mail is not set", async () => {
    expect(await readGitIdentity(home)).toBeUndefined();
    writeFileSync(join(home, ".gitconfig"), "[user]\n\tname = Only A Name\n");
    expect(await readGitIdentity(home)).toBeUndefined();
  });
});
