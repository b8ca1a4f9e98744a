import { spawn } from "node:child_process";
import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createLogger } from "./logging.js";
import { runWithOpId } from "./op-id.js";

function capture() {
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split("\n").filter(Boolean))
        lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { lines, destination };
}

describe("log lines", () => {
  it("share one shape across services: time, level label, service, op_id, msg, fields", () => {
    const { lines, destination } = capture();
    const logger = createLogger({ service: "privileged", destination });
    runWithOpId("op-0123456789ab", () => {
      logger.info(
        { rpc: "banger.privileged.v1.HostService/GetVersion", code: "ok", duration_ms: 1.5 },
        "helper rpc completed",
      );
    });
    logger.warn("outside any call");
    expect(lines).toHaveLength(2);
    const [inCall, outside] = lines;
    expect(inCall).toEqual({
      time: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/) as unknown,
      level: "info",
      service: "privileged",
      op_id: "op-0123456789ab",
      rpc: "banger.privileged.v1.HostService/GetVersion",
      code: "ok",
      duration_ms: 1.5,
      msg: "helper rpc completed",
    });
    expect(outside).toMatchObject({ level: "warn", service: "privileged", msg: "outside any call" });
    expect(outside).not.toHaveProperty("op_id");
  });
});

describe("endLog", () => {
  /** A child that logs two lines a moment apart and exits at once, as a stopping service does; its stdout's lines. */
  const stoppingService = async (end: boolean) => {
    const child = spawn(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        `const { createLogger, endLog } = await import(${JSON.stringify(new URL("../dist/logging.js", import.meta.url).href)});
         const logger = createLogger({ service: "privileged" });
         logger.info("shutting down");
         setImmediate(async () => {
           logger.info("stopped");
           ${end ? "await endLog(logger);" : ""}
           process.exit(0);
         });`,
      ],
      // The built module (dist), as the services run it.
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let text = "";
    child.stdout.on("data", (chunk: Buffer) => (text += chunk.toString()));
    await new Promise((resolve) => child.once("close", resolve));
    return text
      .trim()
      .split("\n")
      .map((l) => (JSON.parse(l) as { msg: string }).msg);
  };

  it("writes a stopping service's last lines out in order before it exits", async () => {
    // Without it, pino's synchronous write at exit could pass the write still in flight: "stopped" came out
    // before "shutting down" in about one exit in three here.
    const runs = await Promise.all(Array.from({ length: 24 }, () => stoppingService(true)));
    expect(runs.filter((lines) => lines.join(",") !== "shutting down,stopped")).toEqual([]);
  });
});
