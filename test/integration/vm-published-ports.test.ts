/**
 * Published ports through the real services and the CLI on fake VMMs: the orchestrator runs in the
 * helper's namespace, as on a real host, so it reaches the bridge's addresses. No guest boots, so a
 * stand-in answers on the guest's address (added to the namespace's loopback): what is relayed
 * there is what a guest would get. The listeners appear with create and start, go with stop and
 * delete, and `vm port add|rm` changes a running VM at once and a stopped one at its next start.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createUnixTransport, fromConnectError } from "@banger/common";
import { requireTools } from "@banger/common/testing";
import { VmService } from "@banger/gen/banger/v1/vm_pb.js";
import { Code, createClient } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FAKE_VM_TOOLS, startFakeVmCluster } from "./fake-vm-cluster.js";
import { OWNER_CAN_READ_CHECKOUT, failure, waitUntil, type Cluster } from "./harness.js";
import { IS_ROOT, type NetNs } from "./netns.js";

const RUNS =
  IS_ROOT && OWNER_CAN_READ_CHECKOUT && requireTools("published ports on fake VMMs", FAKE_VM_TOOLS).length === 0;
// ss comes with ip (iproute2).
const live = describe.skipIf(!RUNS);

let ns: NetNs;
let cluster: Cluster;
let shutdown: () => Promise<void>;
const standIns: ChildProcess[] = [];

beforeAll(async () => {
  if (!RUNS) return;
  const started = await startFakeVmCluster({ orchestratorInNetns: true });
  ({ ns, cluster } = started);
  shutdown = started.shutdown;
});

afterAll(async () => {
  if (!RUNS) return;
  for (const child of standIns) child.kill();
  await shutdown();
});

interface PortJson {
  hostIp: string;
  hostPort: number;
  guestPort: number;
  protocol: string;
}
interface VmJson {
  name: string;
  guestIp: string;
  publishedPorts?: PortJson[];
}

const ok = async (args: string[]) => {
  const result = await cluster.cli(args);
  expect(result.code, `${args.join(" ")}: ${result.stderr}`).toBe(0);
  return result;
};
const show = async (name: string) =>
  (JSON.parse((await ok(["vm", "show", name, "--json"])).stdout) as VmJson[])[0] as VmJson;
/** TCP ports listened on in the namespace (where bangerd runs). */
const listening = () =>
  ns
    .exec(["ss", "-Hltn"])
    .split("\n")
    .flatMap((line) => {
      const port = /\s(\S+):(\d+)\s/.exec(line);
      return port ? [`${port[1]}:${port[2]}`] : [];
    });

/** Runs node with `script` in the namespace; resolves with its stdout. */
function nodeInNs(script: string, keep = false): Promise<string> {
  const child = spawn("ip", ["netns", "exec", ns.name, process.execPath, "-e", script], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  if (keep) standIns.push(child);
  let out = "";
  child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
  return new Promise((resolve) => {
    if (keep) child.stdout.once("data", () => resolve(out));
    child.on("close", () => resolve(out));
  });
}

/** A stand-in guest on `ip`:`port` answering "guest <what it read>". */
async function standInGuest(ip: string, port: number): Promise<void> {
  ns.exec(["ip", "addr", "replace", `${ip}/32`, "dev", "lo"]);
  await nodeInNs(
    `require("net").createServer({allowHalfOpen:true},(s)=>{let d="";s.on("data",(c)=>d+=c);` +
      `s.on("end",()=>s.end("guest "+d))}).listen(${port},"${ip}",()=>console.log("ready"))`,
    true,
  );
}

/** What a client in the namespace gets from host port `port` on `host` ("refused" when nothing listens). */
const askHost = (host: string, port: number, text: string) =>
  nodeInNs(
    `const s=require("net").connect({host:"${host}",port:${port},allowHalfOpen:true});let d="";` +
      `s.on("data",(c)=>d+=c);s.on("connect",()=>s.end("${text}"));s.on("close",()=>process.stdout.write(d));` +
      `s.on("error",(e)=>{process.stdout.write(e.code==="ECONNREFUSED"?"refused":e.code);process.exit(0)})`,
  );

live("published ports on fake VMMs", () => {
  it("listen while the VM runs, relay to the guest, and go with stop and delete", async () => {
    await ok([
      "vm",
      "create",
      "--name",
      "web",
      "--image",
      "tiny",
      "--no-ssh-wait",
      "-p",
      "18080:80",
      "-p",
      "127.0.0.1:18053:53/udp",
    ]);
    const vm = await show("web");
    // Sorted by host port.
    expect(vm.publishedPorts).toEqual([
      { hostIp: "127.0.0.1", hostPort: 18053, guestPort: 53, protocol: "udp" },
      { hostIp: "0.0.0.0", hostPort: 18080, guestPort: 80, protocol: "tcp" },
    ]);
    expect((await ok(["vm", "show", "web"])).stdout).toContain(
      "ports:     127.0.0.1:18053->53/udp, 0.0.0.0:18080->80/tcp",
    );
    expect(listening()).toContain("0.0.0.0:18080");
    await standInGuest(vm.guestIp, 80);
    expect(await askHost("127.0.0.1", 18080, "hello")).toBe("guest hello");

    // Stopped: nothing listens, the VM keeps its ports.
    await ok(["vm", "stop", "web", "--force"]);
    expect(listening()).not.toContain("0.0.0.0:18080");
    expect(await askHost("127.0.0.1", 18080, "x")).toBe("refused");
    expect((await show("web")).publishedPorts).toHaveLength(2);

    // A port added while stopped waits for the start; both listen after it.
    const added = await ok(["vm", "port", "add", "web", "18081:80"]);
    expect(added.stdout).toMatch(/tcp\s+0\.0\.0\.0\s+18081\s+80/);
    expect(listening()).not.toContain("0.0.0.0:18081");
    await ok(["vm", "start", "web", "--no-ssh-wait"]);
    expect(listening()).toEqual(expect.arrayContaining(["0.0.0.0:18080", "0.0.0.0:18081"]));
    expect(await askHost("127.0.0.1", 18081, "again")).toBe("guest again");

    // A crashed bangerd leaves no listener behind (they die with it); restarted, it finds the VM
    // running and listens again.
    await cluster.kill9("orchestrator");
    expect(listening()).not.toContain("0.0.0.0:18080");
    await cluster.start("orchestrator");
    await waitUntil(() => listening().includes("0.0.0.0:18081"), undefined, "the listeners after the restart");
    expect(await askHost("127.0.0.1", 18080, "back")).toBe("guest back");

    // Removed from a running VM: closed at once.
    await ok(["vm", "port", "rm", "web", "18081"]);
    expect(listening()).not.toContain("0.0.0.0:18081");
    const ls = JSON.parse((await ok(["vm", "port", "ls", "web", "--json"])).stdout) as PortJson[];
    expect(ls.map((p) => p.hostPort)).toEqual([18053, 18080]);

    await ok(["vm", "delete", "web"]);
    expect(listening()).not.toContain("0.0.0.0:18080");
  }, 180_000);

  it("refuses clashes, busy and privileged ports clearly, and changes nothing", async () => {
    await ok(["vm", "create", "--name", "one", "--image", "tiny", "--no-ssh-wait", "-p", "19090:80"]);
    // Another VM asking for the same host port: ALREADY_EXISTS, named.
    const clash = await cluster.cli([
      "vm",
      "create",
      "--name",
      "two",
      "--image",
      "tiny",
      "--no-ssh-wait",
      "-p",
      "127.0.0.1:19090:80",
    ]);
    expect(clash.code).not.toBe(0);
    expect(clash.stderr).toContain("host port 19090/tcp is already published by VM one");
    expect((await cluster.cli(["vm", "show", "two"])).code).not.toBe(0);

    // Something on the host holds the port.
    await nodeInNs(`require("net").createServer().listen(19091,"0.0.0.0",()=>console.log("ready"))`, true);
    const busy = await cluster.cli(["vm", "port", "add", "one", "19091:80"]);
    expect(busy.code).not.toBe(0);
    expect(busy.stderr).toContain("host port 0.0.0.0:19091/tcp is already in use on the host");

    // Below 1024 without network.publish_privileged_ports; a bad spec never reaches bangerd.
    const privileged = await cluster.cli(["vm", "port", "add", "one", "80:80"]);
    expect(privileged.code).not.toBe(0);
    expect(privileged.stderr).toContain("host port 80 is privileged");
    const foreign = await cluster.cli(["vm", "port", "add", "one", "203.0.113.7:19092:80"]);
    expect(foreign.stderr).toContain("is not one of this host's IPv4 addresses");
    const bad = await cluster.cli(["vm", "port", "add", "one", "19093"]);
    expect(bad.code).toBe(2);
    const missing = await cluster.cli(["vm", "port", "rm", "one", "19094"]);
    expect(missing.stderr).toContain("does not publish host port 19094/tcp");

    // The codes and reasons a program gets.
    const { transport, close } = createUnixTransport(cluster.socket("orchestrator"), { peer: "orchestrator" });
    try {
      const vms = createClient(VmService, transport);
      const refused = async (port: { hostIp?: string; hostPort: number; guestPort: number; protocol?: string }) => {
        const error = await failure(() => vms.publishVmPort({ name: "one", port }));
        return { code: Code[error.code], reason: fromConnectError(error).reason };
      };
      expect(await refused({ hostPort: 19090, guestPort: 81 })).toEqual({
        code: "AlreadyExists",
        reason: "PORT_PUBLISHED",
      });
      expect(await refused({ hostPort: 19091, guestPort: 80 })).toEqual({
        code: "AlreadyExists",
        reason: "HOST_PORT_IN_USE",
      });
      expect(await refused({ hostPort: 80, guestPort: 80 })).toEqual({
        code: "InvalidArgument",
        reason: "PRIVILEGED_PORT",
      });
      expect(await refused({ hostPort: 0, guestPort: 80 })).toEqual({
        code: "InvalidArgument",
        reason: "INVALID_PORT",
      });
      expect(await refused({ hostPort: 19095, guestPort: 80, protocol: "sctp" })).toEqual({
        code: "InvalidArgument",
        reason: "INVALID_PORT",
      });
      const notThere = await failure(() => vms.unpublishVmPort({ name: "one", hostPort: 19094 }));
      expect({ code: Code[notThere.code], reason: fromConnectError(notThere).reason }).toEqual({
        code: "NotFound",
        reason: "PORT_NOT_PUBLISHED",
      });
    } finally {
      close();
    }

    // Nothing refused listens: only VM one's port and the stand-in holding 19091 (the first test's
    // stand-in guest is on a guest address).
    const hostSide = listening().filter((address) => /^(0\.0\.0\.0|127\.0\.0\.1|\*):(80|1909\d)$/.test(address));
    expect(hostSide.sort()).toEqual(["0.0.0.0:19090", "0.0.0.0:19091"]);
    expect((await show("one")).publishedPorts).toEqual([
      { hostIp: "0.0.0.0", hostPort: 19090, guestPort: 80, protocol: "tcp" },
    ]);
    await ok(["vm", "delete", "one"]);
    await waitUntil(() => !listening().includes("0.0.0.0:19090"), undefined, "the listener to go");
  }, 180_000);
});
