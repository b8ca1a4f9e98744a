import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FailedPreconditionError } from "@banger/common";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  CONFIG_REFERENCE,
  ConfigError,
  DEFAULT_CONFIG,
  defaultConfigPath,
  describeConfig,
  loadConfig,
  parseConfig,
  type BangerConfig,
} from "./index.js";

let dir: string;
let home: string;
let file: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "banger-config-"));
  home = join(dir, "home", "owner");
  file = join(home, ".config", "banger", "config.toml");
  await mkdir(join(home, ".config", "banger"), { recursive: true });
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function load(text: string): Promise<BangerConfig> {
  await writeFile(file, text);
  return loadConfig({ path: file, home });
}

/** The ConfigError a file produces. */
async function problemsOf(text: string): Promise<ConfigError> {
  const error = await load(text).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConfigError);
  expect(error).toBeInstanceOf(FailedPreconditionError);
  expect((error as ConfigError).reason).toBe("INVALID_CONFIG");
  return error as ConfigError;
}

/** Asserts the file produces exactly one problem, on `key`, whose line names file, key and reason. */
async function expectProblem(text: string, key: string, reason: RegExp): Promise<void> {
  const error = await problemsOf(text);
  expect(error.problems.map((p) => p.key)).toEqual([key]);
  expect(error.problems[0]?.reason).toMatch(reason);
  const line = error.message.split("\n").find((l) => l.startsWith(`${file}: ${key}: `));
  expect(line, error.message).toBeDefined();
  expect(line?.slice(`${file}: ${key}: `.length)).toMatch(reason);
}

describe("defaultConfigPath", () => {
  it("uses XDG_CONFIG_HOME when it is absolute, else ~/.config", () => {
    expect(defaultConfigPath({ XDG_CONFIG_HOME: "/x/cfg" }, "/home/o")).toBe("/x/cfg/banger/config.toml");
    expect(defaultConfigPath({}, "/home/o")).toBe("/home/o/.config/banger/config.toml");
    expect(defaultConfigPath({ XDG_CONFIG_HOME: "" }, "/home/o")).toBe("/home/o/.config/banger/config.toml");
    expect(defaultConfigPath({ XDG_CONFIG_HOME: "rel" }, "/home/o")).toBe("/home/o/.config/banger/config.toml");
  });
});

describe("loadConfig defaults", () => {
  const expected = {
    defaultImage: "debian",
    defaultKernel: "",
    vmm: "auto",
    vm: { vcpu: 2, memoryMib: 1024, workDiskMib: 8192, nat: false, logMaxMib: 8 },
    image: { minRootfsMib: 2048 },
    operations: { retentionDays: 30 },
    network: { bridge: "bgr0", address: "172.30.0.1/24", tapPool: 4, publishPrivilegedPorts: false },
    firecracker: { binary: "/usr/local/bin/firecracker" },
    qemu: { binary: "/usr/bin/qemu-system-x86_64" },
    registries: { insecure: [] },
    ssh: { privateKey: null },
    fileSync: [],
  };

  it("a missing file is every default, not an error", async () => {
    const config = await loadConfig({ path: join(dir, "absent.toml"), home });
    expect(config).toEqual({ ...expected, source: { path: join(dir, "absent.toml"), exists: false } });
    expect(DEFAULT_CONFIG).toEqual(expected);
  });

  it("an empty file and a file of empty tables are every default too", async () => {
    expect(await load("")).toEqual({ ...expected, source: { path: file, exists: true } });
    expect(await load("[vm]\n[network]\n[image]\n[firecracker]\n[qemu]\n[registries]\n[ssh]\n")).toMatchObject(
      expected,
    );
  });

  it("fills what the file leaves out, and the result is deeply read-only", async () => {
    const config = await load("[vm]\nvcpu = 4\n");
    expect(config.vm).toEqual({ ...expected.vm, vcpu: 4 });
    expect(config.network).toEqual(expected.network);
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.vm)).toBe(true);
    expect(Object.isFrozen(config.fileSync)).toBe(true);
    expect(() => {
      (config.vm as { vcpu: number }).vcpu = 9;
    }).toThrow(TypeError);
  });
});

describe("loadConfig values", () => {
  it("reads every key", async () => {
    await writeFile(join(home, ".gitconfig"), "[user]\n");
    const config = await load(`
default_image = "alpine"
default_kernel = "debian-6.1"
vmm = "qemu-microvm"

[vm]
vcpu = 32
memory_mib = 262144
work_disk_mib = 64
nat = true

[image]
min_rootfs_mib = 4096

[operations]
retention_days = 7

[network]
bridge = "bgrlab1"
address = "10.99.0.1/16"
tap_pool = 0

[firecracker]
binary = "~/bin/firecracker"

[qemu]
binary = "/opt/qemu/bin/qemu-system-x86_64"

[registries]
insecure = ["Registry.LAN:5000", "10.0.0.2", "[fd00::1]:5000", "registry.lan:5000"]

[ssh]
private_key = "~/.ssh/id_ed25519"

[[file_sync]]
source = "~/.gitconfig"
target = "/root/.gitconfig"
mode = "0644"

[[file_sync]]
source = "${home}/.config/tool/settings.json"
target = "/root/.config/tool/settings.json"
`);
    expect(config).toMatchObject({
      defaultImage: "alpine",
      defaultKernel: "debian-6.1",
      vmm: "qemu-microvm",
      vm: { vcpu: 32, memoryMib: 262144, workDiskMib: 64, nat: true },
      image: { minRootfsMib: 4096 },
      operations: { retentionDays: 7 },
      network: { bridge: "bgrlab1", address: "10.99.0.1/16", tapPool: 0, publishPrivilegedPorts: false },
      firecracker: { binary: join(home, "bin/firecracker") },
      qemu: { binary: "/opt/qemu/bin/qemu-system-x86_64" },
      registries: { insecure: ["registry.lan:5000", "10.0.0.2", "[fd00::1]:5000"] },
      ssh: { privateKey: join(home, ".ssh/id_ed25519") },
      fileSync: [
        { source: join(home, ".gitconfig"), target: "/root/.gitconfig", mode: 0o644 },
        { source: join(home, ".config/tool/settings.json"), target: "/root/.config/tool/settings.json", mode: 0o600 },
      ],
    });
  });
});

describe("loadConfig problems", () => {
  it.each([
    ["default_image = 'Debian!'", "default_image", /must be an image name/],
    ["default_kernel = '../k'", "default_kernel", /kernel name/],
    ["vmm = 'kvmtool'", "vmm", /must be "auto", "firecracker" or "qemu-microvm", got "kvmtool"/],
    ["[vm]\nvcpu = 0", "vm.vcpu", /between 1 and 32, got 0/],
    ["[operations]\nretention_days = 0", "operations.retention_days", /between 1 and 3650, got 0/],
    ["[vm]\nvcpu = 33", "vm.vcpu", /between 1 and 32, got 33/],
    ["[vm]\nvcpu = 2.5", "vm.vcpu", /must be an integer, got float 2.5/],
    ["[vm]\nvcpu = '2'", "vm.vcpu", /must be an integer, got string "2"/],
    ["[vm]\nvcpu = 99999999999999999999", "vm.vcpu", /between 1 and 32, got 99999999999999999999/],
    ["[vm]\nmemory_mib = 64", "vm.memory_mib", /between 128 and 262144, got 64/],
    ["[vm]\nwork_disk_mib = -1", "vm.work_disk_mib", /between 64 and 16777216, got -1/],
    ["[vm]\nnat = 'yes'", "vm.nat", /must be true or false, got string "yes"/],
    ["[vm]\nlog_max_mib = 0", "vm.log_max_mib", /between 1 and 1024, got 0/],
    ["[vm]\nlog_max_mib = 2048", "vm.log_max_mib", /between 1 and 1024, got 2048/],
    ["[image]\nmin_rootfs_mib = 0", "image.min_rootfs_mib", /between 64 and 1048576/],
    ["[network]\nbridge = 'banger0'", "network.bridge", /must match \^bgr/],
    ["[network]\nbridge = 'bgr0123456789abc'", "network.bridge", /must match/],
    ["[network]\naddress = '172.30.0.0/24'", "network.address", /host address of the subnet/],
    ["[network]\naddress = '172.30.0.255/24'", "network.address", /host address of the subnet/],
    ["[network]\naddress = '172.30.0.1/8'", "network.address", /prefix must be \/16 to \/30/],
    ["[network]\naddress = '172.30.0.1/31'", "network.address", /prefix must be \/16 to \/30/],
    ["[network]\naddress = '172.30.0.1'", "network.address", /IPv4 address with a prefix/],
    ["[network]\naddress = '300.1.1.1/24'", "network.address", /IPv4 address with a prefix/],
    ["[network]\naddress = '127.0.0.1/24'", "network.address", /unicast/],
    ["[network]\ntap_pool = 65", "network.tap_pool", /between 0 and 64/],
    ["[firecracker]\nbinary = 'firecracker'", "firecracker.binary", /absolute path/],
    ["[qemu]\nbinary = 42", "qemu.binary", /must be a string, got integer 42/],
    ["[registries]\ninsecure = 'x:5000'", "registries.insecure", /array of strings/],
    ["[registries]\ninsecure = ['http://x:5000']", "registries.insecure[0]", /"host" or "host:port"/],
    ["[registries]\ninsecure = ['ok', 'x:0']", "registries.insecure[1]", /port must be 1-65535/],
    ["[registries]\ninsecure = [5000]", "registries.insecure[0]", /must be a string/],
    ["[ssh]\nprivate_key = 'id_ed25519'", "ssh.private_key", /absolute path/],
    ["vm = 3", "vm", /must be a table \(\[vm\]\), got integer 3/],
    ["file_sync = 'x'", "file_sync", /array of tables/],
    ["[[file_sync]]\ntarget = '/root/a'", "file_sync[0].source", /is required/],
    ["[[file_sync]]\nsource = '~/a'\ntarget = '/etc/passwd'", "file_sync[0].target", /below \/root/],
    ["[[file_sync]]\nsource = '~/a'\ntarget = '/root'", "file_sync[0].target", /below \/root/],
    ["[[file_sync]]\nsource = '~/a'\ntarget = '/root/../etc/x'", "file_sync[0].target", /normalised/],
    ["[[file_sync]]\nsource = '~/a'\ntarget = '/root/a b'", "file_sync[0].target", /may contain only/],
    ["[[file_sync]]\nsource = '~/a'\ntarget = '/root/a'\nmode = '0999'", "file_sync[0].mode", /octal mode/],
    ["[[file_sync]]\nsource = '~/a'\ntarget = '/root/a'\nmode = 644", "file_sync[0].mode", /must be a string/],
  ])("%j → %s", async (text, key, reason) => {
    await expectProblem(text, key, reason);
  });

  it("refuses file_sync sources outside the owner's home, and the home itself", async () => {
    const entry = (source: string) => `[[file_sync]]\nsource = "${source}"\ntarget = "/root/x"\n`;
    await expectProblem(entry("/etc/shadow"), "file_sync[0].source", /inside the owner's home/);
    await expectProblem(entry("~/../other/.ssh/id_rsa"), "file_sync[0].source", /inside the owner's home/);
    await expectProblem(entry(`${home}/../owner2/x`), "file_sync[0].source", /inside the owner's home/);
    await expectProblem(entry("~"), "file_sync[0].source", /inside the owner's home/);
    await expectProblem(entry("relative/x"), "file_sync[0].source", /absolute path/);
  });

  it("refuses two entries with one target", async () => {
    await expectProblem(
      `[[file_sync]]\nsource = "~/a"\ntarget = "/root/x"\n[[file_sync]]\nsource = "~/b"\ntarget = "/root/x"\n`,
      "file_sync[1].target",
      /already the target of file_sync\[0\]/,
    );
  });

  it("reports unknown keys at every level, suggesting a near one", async () => {
    await expectProblem("vcpus = 2", "vcpus", /^unknown key$/);
    await expectProblem("[vm]\nvcpus = 2", "vm.vcpus", /unknown key \(did you mean "vcpu"\?\)/);
    await expectProblem("[network]\n[network.extra]\nx = 1", "network.extra", /unknown key/);
    await expectProblem("[vmm]\ndriver = 'qemu'", "vmm", /must be a string, got a table/);
    await expectProblem(
      "[[file_sync]]\nsource = '~/a'\ntarget = '/root/a'\nowner = 0",
      "file_sync[0].owner",
      /unknown/,
    );
    await expectProblem("[ssh]\n__proto__ = 1", "ssh.__proto__", /unknown key/);
  });

  it("reports every problem at once, each on its own line naming the file", async () => {
    const error = await problemsOf(`
vmm = "kvm"
color = "blue"

[vm]
vcpu = 0
memory_mib = "lots"

[network]
bridge = "eth0"

[[file_sync]]
source = "/etc/hosts"
target = "/root/hosts"
`);
    expect(error.problems.map((p) => p.key).sort()).toEqual(
      ["color", "file_sync[0].source", "network.bridge", "vm.memory_mib", "vm.vcpu", "vmm"].sort(),
    );
    expect(error.problems.every((p) => p.file === file)).toBe(true);
    const lines = error.message.split("\n");
    expect(lines[0]).toBe("invalid configuration (6 problems):");
    expect(lines.slice(1)).toHaveLength(6);
    for (const line of lines.slice(1)) expect(line.startsWith(`${file}: `)).toBe(true);
    expect(error.message).toContain(`${file}: vm.vcpu: must be between 1 and 32, got 0`);
    expect(error.message).toContain(`${file}: color: unknown key`);
  });

  it("reports a TOML syntax error with its line and column", async () => {
    const error = await problemsOf('default_image = "debian"\n\n[vm]\nvcpu = = 2\n');
    expect(error.problems).toHaveLength(1);
    expect(error.problems[0]?.key).toBe("line 4, column 8");
    expect(error.problems[0]?.reason).toMatch(/^TOML syntax error: /);
    expect(error.message).toContain(`${file}: line 4, column 8: TOML syntax error: `);
  });

  it("reports a duplicate key as a syntax error", async () => {
    const error = await problemsOf("[vm]\nvcpu = 1\nvcpu = 2\n");
    expect(error.problems[0]?.key).toMatch(/^line 3, column \d+$/);
  });

  it("reports an unreadable path (a directory) naming it", async () => {
    const error = await loadConfig({ path: dir, home }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain(`${dir}: (file): cannot be read`);
  });
});

describe("the key reference", () => {
  it("describeConfig lists every key with its default", () => {
    const text = describeConfig();
    for (const doc of CONFIG_REFERENCE) expect(text).toContain(`${doc.key} = `);
    expect(text).toContain('network.bridge = "bgr0"');
  });

  it("each key's documented default is the default the parser gives", () => {
    const written = CONFIG_REFERENCE.filter((doc) => doc.default !== "" && !doc.key.includes("[]"))
      .map((doc) => `${doc.key} = ${doc.default}`)
      .join("\n");
    expect(parseConfig(written, "reference.toml", home)).toEqual(parseConfig("", "empty.toml", home));
  });

  it("docs/CONFIG.md documents every key", async () => {
    const md = await readFile(new URL("../../../../docs/CONFIG.md", import.meta.url), "utf8");
    for (const doc of CONFIG_REFERENCE) {
      const leaf = doc.key.slice(doc.key.lastIndexOf(".") + 1);
      expect(md.includes(`\`${leaf}\``) || md.includes(`\`${doc.key}\``), doc.key).toBe(true);
      if (doc.default !== "") expect(md, doc.key).toContain(doc.default.replaceAll('"', ""));
    }
  });
});
