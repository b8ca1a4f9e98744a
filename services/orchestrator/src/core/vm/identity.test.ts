import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { describe, expect, it } from "vitest";
import { newOpenSshKey } from "../ssh2-client.js";
import { identityScript, netmask, networkSteps, newDropbearKey } from "./identity.js";

const dir = mkdtempSync(join(tmpdir(), "banger-identity-"));

const identity = async () => ({
  vmId: "0123456789ab",
  hostname: "f1",
  mac: "02:00:00:00:00:01",
  ip: "172.30.0.9",
  prefixLength: 24,
  gateway: "172.30.0.1",
  files: [{ path: "/etc/hosts", content: Buffer.from("127.0.0.1\tlocalhost\n# it's banger's\n") }],
  epochSeconds: 1_800_000_000,
  entropy: Buffer.from([0, 1, 39, 92, 255]),
  keys: { openssh: await newOpenSshKey("root@f1"), dropbear: newDropbearKey(), kitDropbear: newDropbearKey() },
});

describe("a fork's identity script", () => {
  it.skipIf(requireTools("dropbear's reading of a fork's host key", ["dropbearkey"]).length > 0)(
    "dropbear reads the host key made for it (dropbearkey -y)",
    () => {
      const file = join(dir, "dropbear_ed25519_host_key");
      writeFileSync(file, newDropbearKey());
      const shown = spawnSync("dropbearkey", ["-y", "-f", file], { encoding: "utf8" });
      expect(shown.status, shown.stderr).toBe(0);
      expect(shown.stdout).toMatch(/^ssh-ed25519 AAAAC3NzaC1lZDI1NTE5\S+/m);
    },
  );

  it.skipIf(requireTools("OpenSSH's reading of a fork's host key", ["ssh-keygen"]).length > 0)(
    "OpenSSH reads the host key made for it, and it matches its public key",
    async () => {
      const key = await newOpenSshKey("root@f1");
      const file = join(dir, "ssh_host_ed25519_key");
      writeFileSync(file, key.privateKey, { mode: 0o600 });
      const shown = spawnSync("ssh-keygen", ["-y", "-f", file], { encoding: "utf8" });
      expect(shown.status, shown.stderr).toBe(0);
      expect(shown.stdout.trim().split(" ").slice(0, 2)).toEqual(key.publicKey.trim().split(" ").slice(0, 2));
    },
  );

  it("is valid sh, quotes what it writes, and its printf gives the bytes back (the entropy, a key)", async () => {
    const values = await identity();
    const script = identityScript(values, true);
    const parsed = spawnSync("sh", ["-n", "-c", script], { encoding: "utf8" });
    expect(parsed.status, parsed.stderr).toBe(0);
    // The file's text (with a quote in it) comes back whole through the shell's quoting and printf.
    const put = /^put '\/etc\/hosts' .*$/ms.exec(script)?.[0].split("\nstep ")[0] ?? "";
    const written = join(dir, "hosts");
    const ran = spawnSync("sh", ["-c", `put() { printf %s "$2" >${written}; }\n${put}`], { encoding: "utf8" });
    expect(ran.status, ran.stderr).toBe(0);
    expect(spawnSync("cat", [written], { encoding: "utf8" }).stdout).toBe("127.0.0.1\tlocalhost\n# it's banger's\n");
    const entropy = /^printf ('[^']*') >\/dev\/urandom/m.exec(script)?.[1] ?? "";
    const bytes = spawnSync("sh", ["-c", `printf ${entropy}`]).stdout;
    expect([...bytes]).toEqual([0, 1, 39, 92, 255]);
    expect(script).toContain("arping -U -c 1 -I eth0 '172.30.0.9'");
    expect(identityScript(values, false)).not.toContain("arping");
  });
});

describe("a fork's network steps (in a network namespace, with the host's busybox)", () => {
  const skip = process.getuid?.() !== 0 || requireTools("a fork's network steps", ["ip", "/bin/busybox"]).length > 0;

  it.skipIf(skip)(
    "give eth0 the fork's MAC, address and route, drop the source's address and make its link-local address anew",
    () => {
      const ns = `bgid-${process.pid}`;
      const inNs = (script: string) => {
        const ran = spawnSync("ip", ["netns", "exec", ns, "sh", "-c", script], { encoding: "utf8" });
        expect(ran.status, ran.stderr).toBe(0);
        return ran.stdout;
      };
      spawnSync("ip", ["netns", "del", ns]);
      expect(spawnSync("ip", ["netns", "add", ns]).status).toBe(0);
      try {
        // The source as the snapshot caught it: its MAC, address, route and the link-local address of its MAC.
        inNs(
          [
            "ip link add eth0 type veth peer name peer0",
            "ip link set peer0 up",
            "ip link set eth0 address 02:00:00:00:00:07",
            "ip link set eth0 up",
            "ip addr add 172.30.0.7/24 dev eth0",
            "ip route add default via 172.30.0.1 dev eth0",
            // Until its link-local address is settled, as a running source's is.
            "i=0; while ip -6 addr show dev eth0 | grep -q tentative && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done",
          ].join(" && "),
        );
        expect(inNs("ip -o -6 addr show dev eth0 scope link")).toMatch(/fe80::ff:fe00:7\/64 scope link (?!tentative)/);
        const steps = networkSteps({
          mac: "02:00:00:00:00:09",
          ip: "172.30.0.9",
          prefixLength: 24,
          gateway: "172.30.0.1",
        });
        const failed = inNs(
          [
            "BB=/bin/busybox",
            "failed=",
            'step() { "$@" || { echo "failed: $*"; failed=1; }; }',
            ...steps,
            'echo "done $failed"',
          ].join("\n"),
        );
        expect(failed.trim()).toBe("done");
        const link = inNs("ip -o link show eth0");
        expect(link).toContain("link/ether 02:00:00:00:00:09");
        const v4 = inNs("ip -o -4 addr show dev eth0");
        expect(v4).toContain("inet 172.30.0.9/24");
        expect(v4).not.toContain("172.30.0.7");
        expect(inNs("ip route show default").trim()).toBe("default via 172.30.0.1 dev eth0");
        // The link-local address follows the new MAC (fe80::…:9 from 02:00:00:00:00:09), the source's is gone.
        const v6 = inNs("ip -o -6 addr show dev eth0 scope link");
        expect(v6).toContain("fe80::ff:fe00:9/64");
        expect(v6).not.toContain("fe80::ff:fe00:7");
      } finally {
        spawnSync("ip", ["netns", "del", ns]);
      }
    },
  );

  it("writes the netmask of a prefix length", () => {
    expect([0, 8, 16, 20, 24, 30, 32].map(netmask)).toEqual([
      "0.0.0.0",
      "255.0.0.0",
      "255.255.0.0",
      "255.255.240.0",
      "255.255.255.0",
      "255.255.255.252",
      "255.255.255.255",
    ]);
  });
});
