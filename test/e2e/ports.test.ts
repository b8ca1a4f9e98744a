/**
 * Published ports with a real guest: one busybox + dropbear guest (qemu-microvm under TCG, as in
 * real-guests.test.ts) serves HTTP with busybox httpd on port 8080; `vm create -p 18080:8080`
 * publishes it. The helper and the orchestrator run in a namespace standing for the host; a second
 * namespace, joined to it by a veth pair, stands for a machine on the LAN. The page is fetched from
 * the LAN over the host's address and from the host over 127.0.0.1, then `vm port rm` closes it.
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NOTHING, guestSuiteMissing, pushGuestImage, startGuestEnv, type GuestEnv } from "./support/guest-env.js";

const missing = guestSuiteMissing("the published-ports suite");
const e2e = describe.skipIf(missing.length > 0);

let env: GuestEnv;
/** The "LAN" machine's namespace, and the host's address on the link to it. */
const lan = `bgrlan-${randomBytes(3).toString("hex")}`;
const HOST_ON_LAN = "10.77.0.1";
const PAGE = "hello from the guest";

beforeAll(async () => {
  if (missing.length > 0) return;
  env = await startGuestEnv(pushGuestImage);
  // The LAN: a veth pair between the host's namespace (10.77.0.1) and another one (10.77.0.2).
  const host = env.ns.name;
  execFileSync("ip", ["netns", "add", lan]);
  execFileSync("ip", [
    "link",
    "add",
    "bgrv-host",
    "netns",
    host,
    "type",
    "veth",
    "peer",
    "name",
    "bgrv-lan",
    "netns",
    lan,
  ]);
  env.inNs("ip", "addr", "add", `${HOST_ON_LAN}/24`, "dev", "bgrv-host");
  env.inNs("ip", "link", "set", "bgrv-host", "up");
  for (const argv of [
    ["ip", "addr", "add", "10.77.0.2/24", "dev", "bgrv-lan"],
    ["ip", "link", "set", "bgrv-lan", "up"],
    ["ip", "link", "set", "lo", "up"],
  ]) {
    execFileSync("ip", ["netns", "exec", lan, ...argv]);
  }
}, 300_000);

afterAll(async () => {
  if (missing.length > 0) return;
  execFileSync("ip", ["netns", "del", lan]);
  await env?.shutdown();
});

/** The body of http://<address>:<port>/ fetched from namespace `ns`, or the error's code ("ECONNREFUSED"). */
function fetchFrom(ns: string, address: string, port: number): string {
  const script =
    `require("http").get({host:"${address}",port:${port},path:"/",timeout:20000},(r)=>{let d="";` +
    `r.on("data",(c)=>d+=c);r.on("end",()=>process.stdout.write(d))})` +
    `.on("error",(e)=>process.stdout.write(e.code||String(e))).on("timeout",function(){this.destroy(new Error("TIMEOUT"))})`;
  return execFileSync("ip", ["netns", "exec", ns, process.execPath, "-e", script], { encoding: "utf8" });
}

e2e("published ports to a real guest (qemu-microvm, TCG)", () => {
  it("reaches the guest's HTTP server from the LAN and from the host, until the port is removed", async () => {
    await env.cli(["image", "pull", `${env.registry.host}/banger/guest:1`, "--name", "guest"]);
    await env.importKernel();
    await env.cli(["vm", "create", "--name", "web", "--image", "guest", "-p", "18080:8080", "--ssh-timeout", "180"]);
    const shown = await env.cli(["vm", "show", "web"]);
    expect(shown.stdout).toContain("ports:     0.0.0.0:18080->8080/tcp");
    await env.cli([
      "vm",
      "exec",
      "web",
      "--",
      "sh",
      "-c",
      `mkdir -p /root/www && echo '${PAGE}' > /root/www/index.html && busybox httpd -p 8080 -h /root/www`,
    ]);

    // From the LAN, over the host's address; from the host itself, over 127.0.0.1.
    expect(fetchFrom(lan, HOST_ON_LAN, 18080)).toBe(`${PAGE}\n`);
    expect(fetchFrom(env.ns.name, "127.0.0.1", 18080)).toBe(`${PAGE}\n`);

    await env.cli(["vm", "port", "rm", "web", "18080"]);
    expect(fetchFrom(lan, HOST_ON_LAN, 18080)).toBe("ECONNREFUSED");
    expect(fetchFrom(env.ns.name, "127.0.0.1", 18080)).toBe("ECONNREFUSED");
    // The guest still serves: only the publishing went.
    expect(
      (await env.cli(["vm", "exec", "web", "--", "busybox", "wget", "-qO-", "http://127.0.0.1:8080/"])).stdout,
    ).toBe(`${PAGE}\n`);

    // Added back to the running VM, it answers at once; deleting the VM closes it.
    await env.cli(["vm", "port", "add", "web", `${HOST_ON_LAN}:18081:8080`]);
    expect(fetchFrom(lan, HOST_ON_LAN, 18081)).toBe(`${PAGE}\n`);
    await env.cli(["vm", "delete", "web"]);
    expect(fetchFrom(lan, HOST_ON_LAN, 18081)).toBe("ECONNREFUSED");
    expect(env.leftovers()).toEqual(NOTHING);
  }, 900_000);
});
