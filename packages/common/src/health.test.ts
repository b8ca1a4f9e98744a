import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as S } from "@banger/gen/health/v1/health_pb.js";
import { describe, expect, it } from "vitest";
import { createHealthState, registerHealth } from "./health.js";

const SERVICE = "banger.v1.SystemService";

function setup() {
  const state = createHealthState();
  state.set(SERVICE, "SERVING");
  const client = createClient(
    Health,
    createRouterTransport((router) => registerHealth(router, state)),
  );
  return { state, client };
}

/** Reads a stream one message at a time, so a test can act between messages. */
function reader<T>(stream: AsyncIterable<T>) {
  const iterator = stream[Symbol.asyncIterator]();
  return {
    async next(): Promise<T> {
      const result = await iterator.next();
      if (result.done) throw new Error("stream ended");
      return result.value;
    },
    async ended(): Promise<boolean> {
      return (await iterator.next()).done === true;
    },
  };
}

async function errorOf(promise: Promise<unknown>): Promise<ConnectError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof ConnectError)) throw new Error(`expected a ConnectError, got ${String(error)}`);
  return error;
}

describe("health checking", () => {
  it("answers Check for the server and each service, NOT_FOUND for an unknown one", async () => {
    const { state, client } = setup();
    expect((await client.check({ service: "" })).status).toBe(S.SERVING);
    expect((await client.check({ service: SERVICE })).status).toBe(S.SERVING);
    state.set(SERVICE, "NOT_SERVING");
    expect((await client.check({ service: SERVICE })).status).toBe(S.NOT_SERVING);
    const error = await errorOf(client.check({ service: "nope" }));
    expect(error.code).toBe(Code.NotFound);
    expect(error.rawMessage).toBe("unknown service nope");
  });

  it("lists every service with its status", async () => {
    const { state, client } = setup();
    state.set("other", "NOT_SERVING");
    const { statuses } = await client.list({});
    expect(Object.fromEntries(Object.entries(statuses).map(([name, r]) => [name, r.status]))).toEqual({
      "": S.SERVING,
      [SERVICE]: S.SERVING,
      other: S.NOT_SERVING,
    });
  });

  it("sends the current status on Watch, then each change, and ends the stream at shutdown", async () => {
    const { state, client } = setup();
    const watch = reader(client.watch({ service: SERVICE }));
    expect((await watch.next()).status).toBe(S.SERVING);
    state.set(SERVICE, "NOT_SERVING");
    expect((await watch.next()).status).toBe(S.NOT_SERVING);
    state.set(SERVICE, "SERVING");
    expect((await watch.next()).status).toBe(S.SERVING);
    state.shutdown();
    expect((await watch.next()).status).toBe(S.NOT_SERVING);
    expect(await watch.ended()).toBe(true);
  });

  it("streams SERVICE_UNKNOWN for a service it does not know, then its status once set", async () => {
    const { state, client } = setup();
    const watch = reader(client.watch({ service: "later" }));
    expect((await watch.next()).status).toBe(S.SERVICE_UNKNOWN);
    state.set("later", "SERVING");
    expect((await watch.next()).status).toBe(S.SERVING);
    state.shutdown();
    expect((await watch.next()).status).toBe(S.NOT_SERVING);
    expect(await watch.ended()).toBe(true);
  });

  it("ends Watch when the client cancels", async () => {
    const { client } = setup();
    const abort = new AbortController();
    const watch = reader(client.watch({ service: SERVICE }, { signal: abort.signal }));
    expect((await watch.next()).status).toBe(S.SERVING);
    abort.abort();
    expect((await errorOf(watch.next())).code).toBe(Code.Canceled);
  });

  it("stays NOT_SERVING after shutdown: later set() calls are ignored, new Watch streams end at once", async () => {
    const { state, client } = setup();
    state.shutdown();
    state.set(SERVICE, "SERVING");
    expect((await client.check({ service: "" })).status).toBe(S.NOT_SERVING);
    expect((await client.check({ service: SERVICE })).status).toBe(S.NOT_SERVING);
    const watch = reader(client.watch({ service: SERVICE }));
    expect((await watch.next()).status).toBe(S.NOT_SERVING);
    expect(await watch.ended()).toBe(true);
  });
});
