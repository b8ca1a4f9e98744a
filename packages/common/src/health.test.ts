import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as S } from "@banger/gen/health/v1/health_pb.js";
import { describe, expect, it } from "vitest";
import { createHealthState, registerHealth } from "./health.js";

function setup() {
  const state = createHealthState();
  state.set("", "SERVING");
  state.set("banger.v1.SystemService", "SERVING");
  const client = createClient(
    Health,
    createRouterTransport((router) => registerHealth(router, state)),
  );
  return { state, client };
}

describe("health checking", () => {
  it("answers Check for the server and each service, NOT_FOUND for an unknown one", async () => {
    const { client } = setup();
    expect((await client.check({ service: "" })).status).toBe(S.SERVING);
    expect((await client.check({ service: "banger.v1.SystemService" })).status).toBe(S.SERVING);
    const error = await client.check({ service: "nope" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConnectError);
    expect((error as ConnectError).code).toBe(Code.NotFound);
  });

  it("streams changes on Watch and ends the stream at shutdown", async () => {
    const { state, client } = setup();
    const seen: S[] = [];
    const stream = client.watch({ service: "banger.v1.SystemService" });
    const done = (async () => {
      for await (const update of stream) {
        seen.push(update.status);
        if (seen.length === 1) state.set("banger.v1.SystemService", "NOT_SERVING");
        if (seen.length === 2) state.set("banger.v1.SystemService", "SERVING");
        if (seen.length === 3) state.shutdown();
      }
    })();
    await done;
    expect(seen).toEqual([S.SERVING, S.NOT_SERVING, S.SERVING, S.NOT_SERVING]);
  });

  it("streams SERVICE_UNKNOWN for a service it does not know", async () => {
    const { client } = setup();
    const abort = new AbortController();
    for await (const update of client.watch({ service: "nope" }, { signal: abort.signal })) {
      expect(update.status).toBe(S.SERVICE_UNKNOWN);
      abort.abort();
      break;
    }
  });
});
