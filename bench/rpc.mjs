// Unary call latency over the Unix socket, direct to the helper and through the
// orchestrator (orchestrator → helper + puller hop), sequential and at concurrency 64.
import { createUnixTransport } from "@banger/common";
import { HostService } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { SystemService } from "@banger/gen/banger/v1/system_pb.js";
import { createClient } from "@connectrpc/connect";
import { fmt, measure, printTable, startServices } from "./lib.mjs";

const SEQUENTIAL = Number(process.env.BENCH_CALLS ?? 2000);
const CONCURRENT = SEQUENTIAL * 2;

export async function benchRpc() {
  const services = await startServices();
  try {
    const helper = createUnixTransport(services.socket("privileged"), { peer: "helper" });
    const orchestrator = createUnixTransport(services.socket("orchestrator"), { peer: "orchestrator" });
    const host = createClient(HostService, helper.transport);
    const system = createClient(SystemService, orchestrator.transport);
    const direct = () => host.getVersion({});
    const hop = () => system.getStatus({});

    const rows = [];
    const results = {};
    for (const [label, call] of [
      ["helper GetVersion (direct)", direct],
      ["orchestrator GetStatus (→ helper + puller)", hop],
    ]) {
      const seq = await measure(call, { total: SEQUENTIAL, concurrency: 1 });
      const par = await measure(call, { total: CONCURRENT, concurrency: 64 });
      results[label] = { seq, par };
      rows.push([
        label,
        fmt(seq.p50),
        fmt(seq.p99),
        fmt(seq.perSecond, 0),
        fmt(par.p50),
        fmt(par.p99),
        fmt(par.perSecond, 0),
      ]);
    }
    console.log(
      `\n## unary RPC over a Unix socket (${SEQUENTIAL} sequential calls, ${CONCURRENT} at concurrency 64)\n`,
    );
    printTable(["call", "seq p50 ms", "seq p99 ms", "seq calls/s", "c64 p50 ms", "c64 p99 ms", "c64 calls/s"], rows);
    const [d, h] = Object.values(results);
    console.log(`\nhop cost: GetStatus p50 is ${fmt(h.seq.p50 / d.seq.p50)}x the direct call's (sequential)`);
    helper.close();
    orchestrator.close();
  } finally {
    await services.stop();
  }
}
