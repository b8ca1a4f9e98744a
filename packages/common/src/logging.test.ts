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
