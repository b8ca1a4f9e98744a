/**
 * The argument vectors the helper builds for a VMM from validated fields, and the inverse: which
 * VM's VMM a command line is, if it is exactly one of them (what proves a pid before a signal).
 */
import { runtimeLayout } from "@banger/common/layout";
import type { HelperConfig } from "../../config.js";
import { isVmId, tapName } from "../../validate/ids.js";
import { QMP_SOCKET, vmRuntimePaths, type VmRuntimePaths } from "./runtime-paths.js";
import type { QemuMachine, VmmKind } from "./types.js";

/** The VMM's stderr as a path it can open (Firecracker opens its log itself). */
const VMM_STDERR = "/proc/self/fd/2";

/** Firecracker's argv: only its API socket, id and log; the orchestrator configures the rest over the API. */
export function firecrackerArgv(config: HelperConfig, vmId: string): string[] {
  const paths = vmRuntimePaths(config.runtimeDir, vmId);
  return [
    config.firecrackerBin,
    "--api-sock",
    paths.firecrackerSocket,
    "--id",
    vmId,
    // Its stderr: the pipe to the VM's log relay.
    "--log-path",
    VMM_STDERR,
    "--level",
    "Info",
  ];
}

const QMP_OPTIONS = ",server=on,wait=off";
const NETDEV_ID = "net0";

function qmpValue(paths: VmRuntimePaths): string {
  return `unix:${paths.qmpSocket}${QMP_OPTIONS}`;
}

/**
 * The guest agent's channel: a virtio-serial port named as qemu-ga expects, backed by a socket QEMU
 * listens on in the VM's runtime directory (one client at a time; the orchestrator speaks QGA to it).
 */
function agentChardev(paths: VmRuntimePaths): string {
  return `socket,id=agent0,path=${paths.agentSocket},server=on,wait=off`;
}
const AGENT_PORT = "virtserialport,chardev=agent0,name=org.qemu.guest_agent.0";

/** The guest's serial console on QEMU's stdout, the pipe to the VM's console relay. */
const SERIAL = "stdio";

function netdevPrefix(vmId: string): string {
  return `tap,id=${NETDEV_ID},ifname=${tapName(vmId)},`;
}

/**
 * QEMU's argv for a validated machine: `-M microvm`, the kernel, initrd and
 * command line, the two disks as raw virtio-blk (never probed), the VM's tap,
 * QMP, the guest agent's virtio-serial port and the serial console under the
 * VM's runtime directory.
 * `tscKhz` is the resolved value (the request's, or the host's when it asked for 0).
 */
export function qemuArgv(
  config: HelperConfig,
  vmId: string,
  machine: QemuMachine,
  tscKhz: number | undefined,
): string[] {
  const paths = vmRuntimePaths(config.runtimeDir, vmId);
  return [
    config.qemuBin,
    "-M",
    "microvm,x-option-roms=off",
    "-accel",
    // split-wx: TCG's code buffer mapped twice (writable, and executable) instead of writable-executable,
    // so QEMU runs under the helper unit's MemoryDenyWriteExecute=yes, which its children inherit.
    machine.kvm ? "kvm" : "tcg,split-wx=on",
    "-cpu",
    machine.kvm ? "host" : "max",
    "-smp",
    String(machine.vcpu),
    "-m",
    `${machine.memoryMib}M`,
    "-kernel",
    machine.kernelPath,
    ...(machine.initrdPath === "" ? [] : ["-initrd", machine.initrdPath]),
    "-append",
    kernelCommandLine(machine, tscKhz),
    "-drive",
    `id=root,file=${machine.rootDisk},format=raw,if=none`,
    "-device",
    "virtio-blk-device,drive=root",
    "-drive",
    `id=work,file=${machine.workDisk},format=raw,if=none`,
    "-device",
    "virtio-blk-device,drive=work",
    "-netdev",
    `${netdevPrefix(vmId)}script=no,downscript=no`,
    "-device",
    `virtio-net-device,netdev=${NETDEV_ID},mac=${machine.mac}`,
    "-device",
    "virtio-serial-device",
    "-chardev",
    agentChardev(paths),
    "-device",
    AGENT_PORT,
    "-qmp",
    qmpValue(paths),
    "-serial",
    SERIAL,
    "-nographic",
    "-nodefaults",
    "-no-user-config",
    "-no-reboot",
    // A saved state comes over QMP (migrate-incoming): QEMU opens it as the owner, the helper never sees it.
    ...(machine.incoming ? ["-incoming", "defer"] : []),
  ];
}

export function kernelCommandLine(machine: QemuMachine, tscKhz: number | undefined): string {
  // Under TCG a guest calibrating its TSC hangs about one boot in four: hand it the frequency.
  if (machine.kvm || tscKhz === undefined || /(^| )tsc_early_khz=/.test(machine.bootArgs)) return machine.bootArgs;
  const param = `tsc_early_khz=${tscKhz}`;
  return machine.bootArgs === "" ? param : `${machine.bootArgs} ${param}`;
}

// ------------------------------------------------------------ identification

/** Which VM's VMM an argument vector is, if it is exactly one the helper builds. */
function identifyArgv(config: HelperConfig, argv: readonly string[]): { vmId: string; kind: VmmKind } | undefined {
  const vmsPrefix = `${runtimeLayout(config.runtimeDir).vmsDir}/`;
  if (argv[0] === config.firecrackerBin && argv[3] === "--id") {
    const vmId = argv[4] ?? "";
    if (isVmId(vmId) && sameArgv(argv, firecrackerArgv(config, vmId))) return { vmId, kind: "firecracker" };
  }
  if (argv[0] === config.qemuBin) {
    const qmp = valueAfter(argv, "-qmp") ?? "";
    const head = `unix:${vmsPrefix}`;
    const tail = `/${QMP_SOCKET}${QMP_OPTIONS}`;
    if (!qmp.startsWith(head) || !qmp.endsWith(tail)) return undefined;
    const vmId = qmp.slice(head.length, qmp.length - tail.length);
    if (!isVmId(vmId)) return undefined;
    // The agent's chardev, when there is one (a VMM started before the guest kit has none), is this VM's too.
    const chardev = valueAfter(argv, "-chardev");
    if (
      valueAfter(argv, "-serial") === SERIAL &&
      valueAfter(argv, "-netdev")?.startsWith(netdevPrefix(vmId)) === true &&
      (chardev === undefined || chardev === agentChardev(vmRuntimePaths(config.runtimeDir, vmId)))
    ) {
      return { vmId, kind: "qemu-microvm" };
    }
  }
  return undefined;
}

/**
 * A process's command line as the VMM argv it was started with. A VMM that is
 * a `#!` script (the tests' fake) shows its interpreter first, then exactly
 * the argv the helper passed.
 */
export function identifyCmdline(config: HelperConfig, cmdline: readonly string[]) {
  return identifyArgv(config, cmdline) ?? (cmdline.length > 1 ? identifyArgv(config, cmdline.slice(1)) : undefined);
}

function valueAfter(argv: readonly string[], flag: string): string | undefined {
  const index = argv.indexOf(flag);
  return index < 0 ? undefined : argv[index + 1];
}

function sameArgv(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}
