import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { UsageError } from "../errors.js";
import { devBridgeAddress, withDnsSockets } from "./dev-dns.js";
import { devOwner } from "./dev.js";

const PASSWD = ["root:x:0:0:root:/root:/bin/bash", "ada:x:1000:1001::/home/ada:/bin/sh", "bob:x:1002:1002::/:/bin/sh"]
  .join("\n")
  .concat("\n");
const passwd = () => PASSWD;
const refusal = (work: () => unknown) => {
  try {
    work();
  } catch (error) {
    expect(error).toBeInstanceOf(UsageError);
    return (error as Error).message;
  }
  throw new Error("not refused");
};

describe("devOwner", () => {
  it("as root: --owner by name or uid from /etc/passwd, a bare uid, else the user behind sudo", () => {
    expect(devOwner("ada", {}, 0, passwd)).toEqual({ uid: 1000, gid: 1001, home: "/home/ada" });
    expect(devOwner("1000", {}, 0, passwd)).toEqual({ uid: 1000, gid: 1001, home: "/home/ada" });
    expect(devOwner("4242", {}, 0, passwd)).toEqual({ uid: 4242, gid: 4242, home: undefined });
    // --owner wins over sudo's variables.
    expect(devOwner("bob", { SUDO_UID: "1000", SUDO_GID: "1001" }, 0, passwd)).toMatchObject({ uid: 1002 });
    expect(devOwner(undefined, { SUDO_UID: "1000", SUDO_GID: "1001" }, 0, passwd)).toEqual({
      uid: 1000,
      gid: 1001,
      home: "/home/ada",
    });
  });

  it("as root refuses no owner at all, root as the owner, and a name nobody has", () => {
    expect(refusal(() => devOwner(undefined, {}, 0, passwd))).toMatch(
      /^dev up runs as root without an owner, and VMs never run as root: pass --owner USER .*or run it with sudo from your user/,
    );
    // `sudo` from root: SUDO_UID=0 is no owner either.
    expect(refusal(() => devOwner(undefined, { SUDO_UID: "0", SUDO_GID: "0" }, 0, passwd))).toContain("--owner USER");
    for (const root of ["root", "0"]) expect(refusal(() => devOwner(root, {}, 0, passwd))).toContain("is root");
    expect(refusal(() => devOwner("eve", {}, 0, passwd))).toBe("--owner eve: no such user in /etc/passwd");
  });

  it("not as root: no owner (everything runs as the caller), and --owner is refused", () => {
    expect(devOwner(undefined, { SUDO_UID: "1000", SUDO_GID: "1000" }, 1000, passwd)).toBeUndefined();
    expect(refusal(() => devOwner("ada", {}, 1000, passwd))).toContain("--owner needs root");
  });
});

describe("dev up's .vm DNS sockets", () => {
  const dir = mkdtempSync(join(tmpdir(), "banger-devdns-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const me = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };

  it("binds where the owner's config puts the bridge (read through a symlink as bangerd would), else bangerd's default", async () => {
    const said: string[] = [];
    const say = (line: string) => said.push(line);
    expect(await devBridgeAddress(join(dir, "none"), me, say)).toMatchObject({ address: "172.30.0.1" });
    mkdirSync(join(dir, "mine"));
    writeFileSync(join(dir, "mine", "config.toml"), '[network]\naddress = "10.77.0.1/24"\n');
    expect(await devBridgeAddress(join(dir, "mine"), me, say)).toEqual({
      address: "10.77.0.1",
      from: `network.address in ${join(dir, "mine", "config.toml")}`,
    });
    mkdirSync(join(dir, "linked"));
    symlinkSync(join(dir, "mine", "config.toml"), join(dir, "linked", "config.toml"));
    expect(await devBridgeAddress(join(dir, "linked"), me, say)).toMatchObject({ address: "10.77.0.1" });
    expect(said).toEqual([]);
  });

  it.skipIf(me.uid !== 0)("reads the config as the owner: what the owner cannot read counts as absent", async () => {
    const said: string[] = [];
    mkdirSync(join(dir, "secret"), { mode: 0o700 });
    writeFileSync(join(dir, "secret", "config.toml"), '[network]\naddress = "10.88.0.1/24"\n', { mode: 0o600 });
    chmodSync(dir, 0o755);
    expect(await devBridgeAddress(join(dir, "secret"), { uid: 4242, gid: 4242 }, (l) => said.push(l))).toMatchObject({
      address: "172.30.0.1",
    });
    expect(said).toEqual([
      `cannot read ${join(dir, "secret", "config.toml")} as uid 4242 (EACCES): .vm DNS binds bangerd's default`,
    ]);
  });

  it("runs the orchestrator behind the binder, which drops to the owner", () => {
    const argv = withDnsSockets("/usr/bin/python3", "10.77.0.1", { uid: 1000, gid: 1001 }, ["/node", "main.js"]);
    expect(argv.slice(0, 2)).toEqual(["/usr/bin/python3", "-c"]);
    expect(argv.slice(3)).toEqual(["10.77.0.1", "1000", "1001", "/node", "main.js"]);
    expect(argv[2]).toContain("LISTEN_FDNAMES='dns:dns'");
  });
});
