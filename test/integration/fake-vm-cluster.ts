/**
 * A cluster for VM tests on a machine without KVM or Firecracker: the helper
 * runs as root in a throwaway network namespace and launches
 * services/privileged/test-fixtures/fake-vmm.mjs (Firecracker's API, no
 * guest); the orchestrator and puller run as the owner (uid 1000). It comes
 * with a kernel `k61` (an ELF placeholder in a distribution layout) and an
 * image `tiny` registered from an ext4 file.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { EXT4_TOOLS } from "@banger/common/testing";
import { ROOT, startCluster, type Cluster } from "./harness.js";
import { NETNS_TOOLS, VMM_TOOLS, createNetNs, type NetNs } from "./netns.js";

export const OWNER = 1000;
export const FAKE_VMM = join(ROOT, "services/privileged/test-fixtures/fake-vmm.mjs");

/** The host tools a fake-VM cluster runs: the network, the VMM, ext4 disks, loop devices, finding the fake VMMs. */
export const FAKE_VM_TOOLS = [...NETNS_TOOLS, ...VMM_TOOLS, ...EXT4_TOOLS, "losetup", "pgrep", "pkill"];

export async function startFakeVmCluster(
  options: {
    /** The owner's config.toml (the harness adds `vmm = "firecracker"`). */
    configToml?: string;
    withInitrd?: boolean;
    rootfsSize?: string;
    /** Another "Firecracker" than the fake. */ firecracker?: string;
    /** Runs in the namespace before any service starts (e.g. to leave links there as an earlier run would). */
    prepareNetns?: (ns: NetNs) => void;
    /** Run the orchestrator in the namespace too (it then reaches the bridge's addresses). */
    orchestratorInNetns?: boolean;
  } = {},
) {
  console.log("no KVM or Firecracker here: VMs run under test-fixtures/fake-vmm.mjs (Firecracker's API, no guest)");
  const firecracker = options.firecracker ?? FAKE_VMM;
  const ns: NetNs = createNetNs();
  options.prepareNetns?.(ns);
  const cluster: Cluster = await startCluster({
    ...(options.configToml !== undefined ? { configToml: options.configToml } : {}),
    owner: OWNER,
    netns: ns.name,
    helperArgs: ["--firecracker", firecracker],
    ...(options.orchestratorInNetns ? { orchestratorInNetns: true } : {}),
  });
  const pkg = join(cluster.dir, "kernel-pkg");
  mkdirSync(join(pkg, "boot"), { recursive: true });
  writeFileSync(
    join(pkg, "boot", "vmlinux-6.1.0-27-amd64"),
    Buffer.concat([Buffer.from("\x7fELF"), Buffer.alloc(4096)]),
  );
  if (options.withInitrd) writeFileSync(join(pkg, "boot", "initrd.img-6.1.0-27-amd64"), "initrd");
  const tree = join(cluster.dir, "tree");
  mkdirSync(join(tree, "etc"), { recursive: true });
  writeFileSync(join(tree, "etc", "os-release"), "ID=tiny\n");
  const rootfs = join(cluster.dir, "rootfs.img");
  execFileSync("mkfs.ext4", ["-q", "-F", "-E", "root_owner=0:0", "-d", tree, rootfs, options.rootfsSize ?? "64M"]);
  for (const args of [
    ["kernel", "import", "k61", pkg],
    ["image", "register", "tiny", "--rootfs", rootfs],
  ]) {
    const result = await cluster.cli(args);
    if (result.code !== 0) throw new Error(`${args.join(" ")}: ${result.stderr}`);
  }
  return {
    ns,
    cluster,
    /** Stops the fake VMMs (they outlive the services, by design), the services and the namespace. */
    shutdown: async () => {
      spawnSync("pkill", ["-f", `fake-vmm.mjs --api-sock ${cluster.runtimeDir}/`]);
      await cluster.shutdown();
      ns.remove();
    },
  };
}
