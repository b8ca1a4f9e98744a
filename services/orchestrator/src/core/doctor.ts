/**
 * `banger doctor`: looks at the host and banger's setup and says what is
 * missing, each finding ok / warn / fail with a one-line hint.
 *
 * Every probe (the peers, the helper's host features, /dev/kvm, the VMM's
 * `--version`, tools, addresses, disk space, the SSH key, the catalog) runs at
 * once under its own deadline, so one that hangs costs only its own check.
 * The checks are then built from what came back, in a fixed order (core
 * checks, then each capability's in dependency order) whatever answered
 * first. Failing checks are results, never errors of the call. Nothing here
 * changes the host: the SSH key is read, never made.
 */
import type { Kysely } from "kysely";
import type { BangerConfig } from "../config/index.js";
import { getDefaultKernel, getImage, getKernel, type Database } from "../store/index.js";
import type { CallScope } from "./call-scope.js";
import {
  CAPABILITY_TOOLS,
  orderCapabilities,
  type Capability,
  type DoctorCheck,
  type DoctorFacts,
} from "./capabilities.js";
import { chooseRootDiskStrategy, chooseVmm, vmmBinariesPresent } from "./host-choices.js";
import type { DoctorProbes, HostFeatures } from "./ports.js";
import { kernelFiles } from "./kernels.js";
import type { PeerProbe, ServiceHealth } from "./status.js";
import {
  KIT_TOOLS,
  defaultImageCheck,
  defaultKernelCheck,
  guestKitCheck,
  resolveDefaultKernel,
} from "./doctor/catalog-checks.js";
import { bridgeCheck, featureChecks, spaceCheck, sshKeyCheck } from "./doctor/host-checks.js";
import { helperPrivilegesCheck, serviceCheck, serviceVersionsCheck } from "./doctor/service-checks.js";
import { check, settle, settledValue } from "./doctor/settle.js";
import { configuredBinary, helperBinaryCheck, kvmCheck, vmmVersionCheck } from "./doctor/vmm-checks.js";

export type { CheckStatus, DoctorCheck } from "./capabilities.js";
export type { DoctorProbes, HostAddress, KvmAccess, SshKeyState, VersionOutput } from "./ports.js";
export { firecrackerSupported, parseVmmVersion } from "./doctor/vmm-checks.js";

/** The images and kernels doctor asks about. */
export interface DoctorCatalog {
  /** A local image (defaultKernel null or "": none of its own), or undefined. */
  image(name: string): Promise<{ readonly defaultKernel: string | null } | undefined>;
  kernelExists(name: string): Promise<boolean>;
  /** The host default kernel's name, or undefined when no kernel is imported. */
  defaultKernel(): Promise<string | undefined>;
  /** Whether a kernel's initrd is banger's with the guest kit (agent and SSH server); undefined: not known. */
  kernelHasKit?(name: string): Promise<boolean>;
  /** The host's installed kernel a first VM imports when none is (kernels.ts findHostKernel); undefined: none. */
  hostKernel?(): Promise<{ readonly version: string; readonly kernel: string } | undefined>;
}

/** The catalog as the store holds it. */
export function storeCatalog(
  db: Kysely<Database>,
  kernelDir?: (name: string) => string,
  hostKernel?: DoctorCatalog["hostKernel"],
): DoctorCatalog {
  return {
    ...(hostKernel ? { hostKernel } : {}),
    image: (name) => getImage(db, name),
    kernelExists: async (name) => (await getKernel(db, name)) !== undefined,
    defaultKernel: async () => (await getDefaultKernel(db))?.name,
    ...(kernelDir
      ? {
          kernelHasKit: async (name: string) => {
            const kernel = await getKernel(db, name);
            return kernel !== undefined && kernelFiles(kernelDir(name), kernel).kit;
          },
        }
      : {}),
  };
}

export interface DoctorDeps {
  readonly config: Pick<
    BangerConfig,
    "vmm" | "firecracker" | "qemu" | "network" | "defaultImage" | "defaultKernel" | "source"
  >;
  readonly stateDir: string;
  readonly self: () => ServiceHealth;
  /** The privileged helper and the image puller. */
  readonly peers: readonly PeerProbe[];
  /** The helper's host features (its GetVersion). */
  readonly features: (scope: CallScope) => Promise<HostFeatures>;
  readonly probes: DoctorProbes;
  readonly catalog: DoctorCatalog;
  /** Their doctorChecks come after the core checks, in dependency order. */
  readonly capabilities: readonly Capability[];
  /** Deadline of each probe and each capability's checks; default 5 s. */
  readonly probeTimeoutMs?: number;
}

export interface ReportedCheck extends DoctorCheck {
  /** The capability it belongs to; "" for core checks. */
  readonly capability: string;
}

export interface DoctorReport {
  readonly checks: readonly ReportedCheck[];
  /** False when any check failed. */
  readonly ok: boolean;
  /** e.g. "clone (no /dev/mapper/control)". */
  readonly rootDiskStrategy: string;
  /** e.g. "qemu-microvm (configured; TCG: /dev/kvm absent)". */
  readonly vmm: string;
}

export interface Doctor {
  /** `clientVersion` (may be "") is what every service's version must equal. */
  run(clientVersion: string, scope: CallScope): Promise<DoctorReport>;
}

const DEFAULT_PROBE_TIMEOUT_MS = 5_000;
const E2FSPROGS_HINT = "install e2fsprogs (e.g. sudo apt-get install e2fsprogs)";
/**
 * Tools doctor checks itself: images are built with them (puller), root disks checked (helper), work disks
 * made (bangerd); zstd layers unpack through zstd (puller); each VM's log relays are busybox (helper).
 */
const CORE_TOOLS = [
  { tool: "mkfs.ext4", check: "mkfs-ext4", without: "images and work disks cannot be made", hint: E2FSPROGS_HINT },
  {
    tool: "debugfs",
    check: "debugfs",
    without: "image ownership and guest files cannot be written",
    hint: E2FSPROGS_HINT,
  },
  { tool: "e2fsck", check: "e2fsck", without: "disks cannot be checked", hint: E2FSPROGS_HINT },
  {
    tool: "zstd",
    check: "zstd",
    without: "images with zstd layers cannot be pulled",
    hint: "install zstd (e.g. sudo apt-get install zstd)",
  },
  {
    tool: "busybox",
    check: "busybox",
    without: "VMs cannot start (their console and VMM logs go through busybox log relays)",
    hint: "install busybox-static (e.g. sudo apt-get install busybox-static)",
  },
] as const;

export function createDoctor(deps: DoctorDeps): Doctor {
  const timeoutMs = deps.probeTimeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS;
  const { config, probes } = deps;
  const configPath = config.source.path;

  return {
    async run(clientVersion, scope) {
      const probe = <T>(work: (signal: AbortSignal) => Promise<T>) => settle(scope.signal, timeoutMs, work);
      const peerScope = (signal: AbortSignal): CallScope => ({
        signal,
        timeoutMs: Math.min(scope.timeoutMs ?? timeoutMs, timeoutMs),
      });
      const toolNames = [...CORE_TOOLS.map((t) => t.tool), ...KIT_TOOLS.map((t) => t.tool), ...CAPABILITY_TOOLS];
      const imageName = config.defaultImage;
      // The VMM new VMs get ("auto" decides by the helper's host features and the binaries it launches).
      const featuresProbe = probe((signal) => deps.features(peerScope(signal)));
      const kvmProbe = probe(() => probes.kvmAccess());
      const vmmChoice = Promise.all([featuresProbe, kvmProbe]).then(async ([features, kvm]) => {
        const known = features.ok ? features.value : undefined;
        const binaries = known?.vmmBinaries ?? { firecracker: config.firecracker.binary, qemu: config.qemu.binary };
        return {
          ...chooseVmm(
            config.vmm,
            {
              kvm: known?.kvm ?? (kvm.ok && kvm.value.ok),
              ...(known?.kvmDetail ? { kvmDetail: known.kvmDetail } : {}),
            },
            await vmmBinariesPresent(binaries),
          ),
          binaries,
        };
      });
      const [
        peers,
        features,
        kvm,
        vmm,
        version,
        tools,
        ipForwarding,
        lowPorts,
        addresses,
        space,
        sshKey,
        image,
        kernel,
        host,
      ] = await Promise.all([
        Promise.all(deps.peers.map((peer) => probe((signal) => peer.identify(peerScope(signal))))),
        featuresProbe,
        kvmProbe,
        vmmChoice,
        vmmChoice.then((chosen) => probe((signal) => probes.version(configuredBinary(config, chosen.value), signal))),
        Promise.all(toolNames.map((tool) => probe(() => probes.findTool(tool)))),
        probe(() => probes.ipForwarding()),
        probe(() => probes.lowPorts()),
        probe(() => probes.addresses()),
        probe(() => probes.freeSpace(deps.stateDir)),
        probe(() => probes.sshKey()),
        probe(() => deps.catalog.image(imageName)),
        probe(() => resolveDefaultKernel(deps, imageName)),
        probe(async () => (await deps.catalog.hostKernel?.()) ?? null),
      ]);

      const self = deps.self();
      const services: ServiceHealth[] = [
        self,
        ...deps.peers.map((peer, i): ServiceHealth => {
          const answer = peers[i];
          if (answer?.ok) return { name: peer.name, socket: peer.socket, identity: answer.value };
          const error = answer?.ok === false ? answer.error : { message: "not asked" };
          return {
            name: peer.name,
            socket: peer.socket,
            error: { kind: error.kind ?? "unavailable", message: error.message },
          };
        }),
      ];
      const helper = services.find((s) => s.name === "privileged");
      // The helper answered GetVersion for identify() but not for features(): still "not checked".
      const hostFeatures = features.ok ? features.value : undefined;
      const toolPaths = new Map(toolNames.map((tool, i) => [tool, settledValue(tools[i])]));

      const core: DoctorCheck[] = [
        kvmCheck(kvm, vmm.value, hostFeatures),
        helperBinaryCheck(
          vmmVersionCheck(version, vmm.value, configuredBinary(config, vmm.value), configPath),
          vmm.value,
          configuredBinary(config, vmm.value),
          features.ok ? features.value.vmmBinaries : undefined,
          configPath,
        ),
        ...services.map(serviceCheck),
        serviceVersionsCheck(services, clientVersion),
        helperPrivilegesCheck(helper, hostFeatures),
        ...featureChecks(hostFeatures),
        ...CORE_TOOLS.map(({ tool, check: name, without, hint }) => {
          const path = toolPaths.get(tool);
          return path
            ? check(name, "ok", path)
            : check(name, "fail", `${tool} not found in /usr/sbin:/usr/bin:/sbin:/bin: ${without}`, hint);
        }),
        bridgeCheck(addresses, config.network, configPath),
        defaultImageCheck(image, imageName, configPath),
        defaultKernelCheck(kernel, host.ok ? (host.value ?? undefined) : undefined),
        guestKitCheck(toolPaths, kernel),
        sshKeyCheck(sshKey, configPath),
        spaceCheck(space, deps.stateDir),
      ];

      const facts: DoctorFacts = {
        features: hostFeatures,
        // The helper's reading is the host's (where NAT happens); bangerd's unit cannot read /proc/sys.
        ipForwarding: hostFeatures?.ipForward ?? settledValue(ipForwarding),
        lowPorts: settledValue(lowPorts),
        tools: toolPaths,
      };
      const capabilities = orderCapabilities(deps.capabilities);
      const capabilityChecks = await Promise.all(
        capabilities.map(async (capability): Promise<ReportedCheck[]> => {
          if (!capability.doctorChecks) return [];
          const hook = capability.doctorChecks.bind(capability);
          const found = await probe(() => hook(facts));
          if (!found.ok) {
            return [
              {
                ...check(capability.name, "fail", `its checks did not complete: ${found.error.message}`),
                capability: capability.name,
              },
            ];
          }
          return found.value.map((c) => ({ ...c, hint: c.status === "ok" ? "" : c.hint, capability: capability.name }));
        }),
      );

      const checks: ReportedCheck[] = [...core.map((c) => ({ ...c, capability: "" })), ...capabilityChecks.flat()];
      const strategy = hostFeatures ? chooseRootDiskStrategy(hostFeatures) : undefined;
      return {
        checks,
        ok: !checks.some((c) => c.status === "fail"),
        rootDiskStrategy: strategy
          ? `${strategy.value} (${strategy.why})`
          : "unknown (the privileged helper is not reachable)",
        vmm: `${vmm.value} (${vmm.why})`,
      };
    },
  };
}
