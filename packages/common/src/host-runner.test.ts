import { describe, expect, it } from "vitest";
import { type BangerError, CancelledError, HostCommandError } from "./errors.js";
import { createHostRunner, runAttached, runProcess, streamProcess } from "./host-runner.js";

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

  it("keeps stdout as bytes, runs where and with the environment it is told, and can quote stdout in a failure", async () => {
    const bytes = await runProcess(["printf", "\\377\\000\\n"]);
    expect([...bytes.stdout]).toEqual([0xff, 0x00, 0x0a]);
    const where = await runProcess(["sh", "-c", 'pwd; echo "$PATH $LC_ALL $SEEN"'], {
      cwd: "/tmp",
      env: { PATH: "/usr/bin:/bin", SEEN: "yes" },
    });
    expect(where.stdout.toString()).toBe("/tmp\n/usr/bin:/bin  yes\n");
    expect((await runProcess(["sh", "-c", "echo $PATH $LC_ALL"])).stdout.toString()).toBe(
      "/usr/sbin:/usr/bin:/sbin:/bin C\n",
    );
    const error = await runProcess(["sh", "-c", "echo found 3 errors; exit 4"], { stdoutInError: true }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(HostCommandError);
    expect((error as HostCommandError).message).toContain("found 3 errors");
  });

  it("streams a program's output as it is read, and says how it ended", async () => {
    const seq = streamProcess(["seq", "3"]);
    const chunks: Buffer[] = [];
    for await (const chunk of seq.stdout) chunks.push(chunk as Buffer);
    await seq.exited;
    expect(Buffer.concat(chunks).toString()).toBe("1\n2\n3\n");
    expect(seq.running()).toBe(false);

    const failing = streamProcess(["sh", "-c", "echo bad input >&2; exit 2"]);
    failing.stdout.resume();
    await expect(failing.exited).rejects.toMatchObject({ reason: "HOST_COMMAND_FAILED", exitCode: 2 });
    await expect(failing.exited).rejects.toThrow(/bad input/);

    // Nobody reads: the pipe fills and `yes` waits; stop() ends it.
    const endless = streamProcess(["yes"]);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(endless.running()).toBe(true);
    endless.stop();
    endless.stdout.resume();
    await expect(endless.exited).rejects.toMatchObject({ exitCode: null });

    const missing = streamProcess(["banger-no-such-tool"]);
    await expect(missing.exited).rejects.toMatchObject({ reason: "HOST_TOOL_MISSING" });

    const controller = new AbortController();
    const cancelled = streamProcess(["sleep", "10"], { signal: controller.signal });
    controller.abort();
    await expect(cancelled.exited).rejects.toBeInstanceOf(CancelledError);
  });

  it("hands a program this process's stdio and resolves with its exit code", async () => {
    expect(await runAttached(["sh", "-c", "exit 7"])).toBe(7);
    expect(await runAttached(["true"])).toBe(0);
    await expect(runAttached(["banger-no-such-tool"])).rejects.toMatchObject({ reason: "HOST_TOOL_MISSING" });
  });
});
