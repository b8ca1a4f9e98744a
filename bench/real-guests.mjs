// What the benches of real guests share (boot.mjs, fork.mjs): the three real services (orchestrator
// and puller as uid 1000, the helper as root; the helper and the orchestrator in a throwaway network
// namespace, where the bridge and the guests are), QEMU `-M microvm` under TCG (no KVM here), this
// machine's Debian kernel imported with banger's initramfs (guest kit included), the built-in busybox
// image `tiny`, and the clients to drive them.
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { createUnixTransport } from "@banger/common";
import { ExecService } from "@banger/gen/banger/v1/exec_pb.js";
import { OperationService, OperationState } from "@banger/gen/banger/v1/operation_pb.js";
import { VmService } from "@banger/gen/banger/v1/vm_pb.js";
import { createClient } from "@connectrpc/connect";
import { ROOT, importTestSupport, percentile, startServices } from "./lib.mjs";

export const OWNER = 1000;
export const BANGER = join(ROOT, "bin/banger");
export const QEMU = "/usr/bin/qemu-system-x86_64";
/** The e2e suite's guests: one vCPU, 256 MiB. */
const CONFIG = ["[vm]", "vcpu = 1", "memory_mib = 256", "work_disk_mib = 256", "[image]", "min_rootfs_mib = 64", ""];

export const ms = (t0) => performance.now() - t0;
export const median = (values) =>
  percentile(
    [...values].sort((a, b) => a - b),
    50,
  );
export const durationMs = (d) => (d ? Number(d.seconds) * 1000 + d.nanos / 1e6 : 0);

/** Why real guests cannot run here, or undefined. */
export function realGuestSkipReason() {
  if (process.getuid?.() !== 0) return "needs root (a network namespace, and the services as uid 1000)";
  for (const tool of [QEMU, "/bin/busybox", "/usr/sbin/dropbear", "/usr/sbin/qemu-ga"]) {
    if (spawnSync("test", ["-x", tool]).status !== 0) return `needs ${tool}`;
  }
  const check = ["--reuid", String(OWNER), "--regid", String(OWNER), "--clear-groups", "test", "-r", BANGER];
  if (spawnSync("setpriv", check).status !== 0) return `uid ${OWNER} cannot read ${BANGER}`;
  return undefined;
}

function runCli(args, env) {
  const r = spawnSync(BANGER, args, { env: { ...process.env, BANGER_SOCKET: "", ...env }, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`banger ${args.join(" ")} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** The pids of the QEMUs banger launched for VMs under `runtimeDir`. */
export function qemuPids(runtimeDir) {
  const out = spawnSync("pgrep", ["-f", `qemu-system-x86_64.*${runtimeDir}/`], { encoding: "utf8" }).stdout;
  return out
    .split("\n")
    .filter((l) => l !== "")
    .map(Number);
}

/**
 * Runs `body` with the services up, the kernel and initramfs imported and `tiny` pulled; then stops
 * the services, kills this run's QEMUs and removes the namespace. `body` gets `services`, `netns`, the VmService
 * client `vms`, `watch(id)` (follows an operation to its end, throws unless it succeeded; returns it),
 * `execTrue(vm)` (Exec `true`: whether it exited 0) and `cli(args)` (the CLI against these services).
 */
export async function withRealGuests(body) {
  const netns = `bgrb-${randomBytes(4).toString("hex")}`;
  execFileSync("ip", ["netns", "add", netns]);
  execFileSync("ip", ["netns", "exec", netns, "ip", "link", "set", "lo", "up"]);
  let services;
  let transport;
  try {
    services = await startServices({
      owner: OWNER,
      netns,
      vmm: "qemu-microvm",
      configToml: CONFIG.join("\n"),
      orchestratorInNetns: true,
    });
    const cliEnv = { BANGER_RUNTIME_DIR: services.runtimeDir };
    const cli = (args) => runCli(args, cliEnv);
    // This machine's kernel in a package's layout, imported, and banger's initramfs with the kit.
    const { KERNEL_VERSION, writeKernelPackage } = await importTestSupport("test/e2e/support/kernel-package.ts");
    if (!KERNEL_VERSION) throw new Error("no kernel in /boot with its modules");
    const pkg = join(services.dir, "kernel-pkg");
    await writeKernelPackage(KERNEL_VERSION, pkg);
    execFileSync("chown", ["-R", `${OWNER}:${OWNER}`, pkg]);
    cli(["kernel", "import", "debian", pkg]);
    cli(["kernel", "initramfs", "debian"]);
    cli(["image", "pull", "tiny"]);

    transport = createUnixTransport(services.socket("orchestrator"), { peer: "orchestrator" });
    const vms = createClient(VmService, transport.transport);
    const operations = createClient(OperationService, transport.transport);
    const exec = createClient(ExecService, transport.transport);
    const watch = async (id) => {
      let last;
      for await (const { operation } of operations.watchOperation({ id })) last = operation;
      if (last?.state !== OperationState.SUCCEEDED) {
        throw new Error(
          `operation ${id} ended ${OperationState[last?.state]}: ${last?.error?.stage} ${last?.error?.message}`,
        );
      }
      return last;
    };
    const execTrue = async (vm) => {
      try {
        for await (const message of exec.exec({ command: { vm, argv: ["true"] } })) {
          if (message.event.case === "exit") return message.event.value.code === 0;
        }
      } catch {
        return false;
      }
      return false;
    };
    return await body({ services, netns, vms, watch, execTrue, cli });
  } finally {
    transport?.close();
    if (services) {
      await services.stop();
      // VMMs outlive the services by design: this run's, by pid.
      for (const pid of qemuPids(services.runtimeDir)) process.kill(pid, "SIGKILL");
    }
    execFileSync("ip", ["netns", "del", netns]);
  }
}

/** Exec `true` in `vm` until it exits 0 (every 50 ms, at most 100 tries); how many tries it took. */
export async function untilExecAble(execTrue, vm) {
  let tries = 1;
  while (!(await execTrue(vm))) {
    if (++tries > 100) throw new Error(`vm exec ${vm} -- true never succeeded`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return tries;
}
