import { describe, expect, it } from "vitest";
import { type BangerError, CancelledError, HostCommandError } from "./errors.js";
import { createHostRunner } from "./host-runner.js";

const runner = createHostRunner();

describe("the host runner", () => {
  it("passes stdin, collects output, and accepts the exit codes it is told are fine", async () => {
    expect(await runner.run(["cat"], { stdin: "hello" })).toEqual({ code: 0, stdout: "hello", stderr: "" });
    expect((await runner.run(["sh", "-c", "exit 1"], { okCodes: [0, 1] })).code).toBe(1);
  });

  it("turns another exit into HOST_COMMAND_FAILED with the argv and stderr", async () => {
    const error = await runner.run(["sh", "-c", "echo broken >&2; exit 3"]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HostCommandError);
    expect((error as HostCommandError).message).toContain("broken");
  });

  it.skipIf(process.getuid?.() !== 0)("runs a tool as another user when asked (as root)", async () => {
    const ran = await runner.run(["id", "-u"], { as: { uid: 1000, gid: 1000 } });
    expect(ran.stdout).toBe("1000\n");
    expect((await runner.run(["id", "-g"], { as: { uid: 1000, gid: 1000 } })).stdout).toBe("1000\n");
    // None of the caller's supplementary groups (the installed helper's banger and banger-puller): only its own.
    expect((await runner.run(["id", "-G"], { as: { uid: 1000, gid: 1000 } })).stdout).toBe("1000\n");
  });

  it("stops a tool that prints without end (RESOURCE_EXHAUSTED HOST_OUTPUT_TOO_LARGE), keeping only what the cap allows", async () => {
    const before = process.memoryUsage().rss;
    const error = await runner
      .run(["yes", "a guest's file system can make e2fsck print this forever"])
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ kind: "resource-exhausted", reason: "HOST_OUTPUT_TOO_LARGE" });
    expect((error as Error).message).toContain(`${16 * 1024 * 1024} bytes`);
    // The runner kept at most the cap: nowhere near the gigabytes `yes` would print.
    expect(process.memoryUsage().rss - before).toBeLessThan(256 * 1024 * 1024);
    await expect(runner.run(["head", "-c", "2000", "/dev/zero"], { maxOutputBytes: 1000 })).rejects.toMatchObject({
      reason: "HOST_OUTPUT_TOO_LARGE",
    });
    expect((await runner.run(["head", "-c", "1000", "/dev/zero"], { maxOutputBytes: 1000 })).stdout).toHaveLength(1000);
  });

  it("says a tool is not installed (FAILED_PRECONDITION HOST_TOOL_MISSING)", async () => {
    const error = (await runner.run(["banger-no-such-tool"]).catch((e: unknown) => e)) as BangerError;
    expect([error.kind, error.reason, error.message]).toEqual([
      "failed-precondition",
      "HOST_TOOL_MISSING",
      "banger-no-such-tool is not installed on this host",
    ]);
  });

  it("ends a cancelled run with CancelledError, and never starts one cancelled before", async () => {
    const controller = new AbortController();
    const running = runner.run(["sleep", "10"], { signal: controller.signal });
    controller.abort();
    await expect(running).rejects.toBeInstanceOf(CancelledError);
    await expect(runner.run(["true"], { signal: controller.signal })).rejects.toBeInstanceOf(CancelledError);
  });
});
