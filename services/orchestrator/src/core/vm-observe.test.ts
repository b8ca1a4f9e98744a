import { appendFileSync, renameSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { chunks, lastLines, readLog } from "./vm-observe.js";

describe("VM logs", () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), "banger-logs-"))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it("takes the last lines, a final newline ending the last one", () => {
    const text = Buffer.from("a\nb\nc\n");
    expect(lastLines(text, 2).toString()).toBe("b\nc\n");
    expect(lastLines(text, 5).toString()).toBe("a\nb\nc\n");
    expect(lastLines(Buffer.from("a\nb"), 1).toString()).toBe("b");
    expect(lastLines(text, 0).toString()).toBe("a\nb\nc\n");
  });

  it("cuts chunks of at most 64 KiB at line ends", () => {
    const line = `${"x".repeat(999)}\n`;
    const text = Buffer.from(line.repeat(200)); // 200,000 bytes
    const parts = [...chunks(text)];
    expect(parts.every((p) => p.length <= 65536 && p.at(-1) === 0x0a)).toBe(true);
    expect(Buffer.concat(parts).equals(text)).toBe(true);
    expect([...chunks(Buffer.alloc(70_000, 0x41))].map((p) => p.length)).toEqual([65536, 70_000 - 65536]);
  });

  it("follows what is appended, starts over when the file is replaced by a shorter one, and stops when the VM is gone", async () => {
    const path = join(dir, "console.log");
    writeFileSync(path, "boot 1\nready\n");
    const controller = new AbortController();
    let vmThere = true;
    const got: string[] = [];
    const reading = (async () => {
      for await (const chunk of readLog(path, {
        tailLines: 1,
        follow: true,
        signal: controller.signal,
        stillThere: () => Promise.resolve(vmThere),
      })) {
        got.push(chunk.toString());
      }
    })();
    const waitFor = async (text: string) => {
      while (!got.join("").includes(text)) await new Promise((r) => setTimeout(r, 20));
    };
    await waitFor("ready");
    appendFileSync(path, "login:\n");
    await waitFor("login:");
    writeFileSync(path, "boot 2\n"); // the VMM started again with a new log
    await waitFor("boot 2");
    vmThere = false;
    await reading;
    expect(got.join("")).toBe("ready\nlogin:\nboot 2\n");
  });

  it("reads the predecessor the log relay rotated to, and follows across a rotation without losing output", async () => {
    const path = join(dir, "rotated.log");
    writeFileSync(`${path}.1`, "old 1\nold 2\nhalf a li");
    writeFileSync(path, "ne\nnew 1\n");
    const all: Buffer[] = [];
    const aborted = new AbortController();
    aborted.abort();
    const whole = { follow: false, signal: aborted.signal, stillThere: () => Promise.resolve(true) };
    for await (const chunk of readLog(path, { ...whole, tailLines: 0 })) all.push(chunk);
    expect(Buffer.concat(all).toString()).toBe("old 1\nold 2\nhalf a line\nnew 1\n");
    const tail: Buffer[] = [];
    for await (const chunk of readLog(path, { ...whole, tailLines: 2 })) tail.push(chunk);
    expect(Buffer.concat(tail).toString()).toBe("half a line\nnew 1\n");

    const controller = new AbortController();
    let vmThere = true;
    const got: string[] = [];
    const reading = (async () => {
      for await (const chunk of readLog(path, {
        tailLines: 1,
        follow: true,
        signal: controller.signal,
        stillThere: () => Promise.resolve(vmThere),
      })) {
        got.push(chunk.toString());
      }
    })();
    const waitFor = async (text: string) => {
      while (!got.join("").includes(text)) await new Promise((r) => setTimeout(r, 20));
    };
    await waitFor("new 1");
    // Written and rotated within one poll: the end of the old file is read from its new name.
    appendFileSync(path, "new 2\n");
    renameSync(path, `${path}.1`);
    writeFileSync(path, "newest\n");
    await waitFor("newest");
    vmThere = false;
    await reading;
    expect(got.join("")).toBe("new 1\nnew 2\nnewest\n");
  });
});
