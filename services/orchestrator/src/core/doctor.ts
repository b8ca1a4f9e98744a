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
import { BangerError, type ErrorKind } from "@banger/common";
import type { Kysely } from "kysely";
import type { BangerConfig, VmmDriver } from "../config/index.js";
import { getDefaultKernel, getImage, getKernel, type Database } from "../store/index.js";
import type { CallScope } from "./call-scope.js";
import {
  CAPABILITY_TOOLS,
  orderCapabilities,
  type Capability,
  type CheckStatus,
  type DoctorCheck,
  type DoctorFacts,
} from "./capabilities.js";
import { chooseRootDiskStrategy, chooseVmm, vmmBinariesPresent } from "./host-choices.js";
import type { HostFeatures } from "./host.js";
import { CATALOG, TINY_IMAGE, isKnownImageName } from "./images.js";
import { compareVersions, kernelFiles } from "./kernels.js";
import type { PeerProbe, ServiceHealth, ServiceIdentity, ServiceRole } from "./status.js";
import { parseBridgeAddress } from "./vm-addresses.js";

export type { CheckStatus, DoctorCheck } from "./capabilities.js";

/** Whether bangerd itself can open /dev/kvm read-write (the VMM runs as the same user). */
export type KvmAccess =
  | { readonly ok: true }
  | {
      readonly ok: false;
      /** errno code, e.g. "ENOENT", "EACCES". */
      readonly code: string;
      /** /dev/kvm's group name when it exists, e.g. "kvm". */
      readonly group?: string | undefined;
      /** bangerd's user name, for the hint. */
      readonly user?: string | undefined;
    };

/** What `<binary> --version` gave. */
export type VersionOutput =
  | { readonly kind: "output"; readonly text: string }
  | { readonly kind: "missing" }
  | { readonly kind: "not-executable" }
  | { readonly kind: "failed"; readonly message: string };

/** The SSH key banger logs in to guests with, as found (never created here). */
export type SshKeyState =
  | { readonly kind: "ok"; readonly path: string; readonly managed: boolean; readonly fingerprint: string }
  | { readonly kind: "missing"; readonly path: string; readonly managed: boolean }
  | { readonly kind: "unusable"; readonly path: string; readonly managed: boolean; readonly message: string };

/** An IPv4 address of a host interface, e.g. { interface: "docker0", cidr: "172.17.0.1/16" }. */
export interface HostAddress {
  readonly interface: string;
  readonly cidr: string;
}

/** Read-only host probes (host/doctor-probes.ts is the real one; tests script them). */
export interface DoctorProbes {
  kvmAccess(): Promise<KvmAccess>;
  /** Runs `<binary> --version` (stdout and stderr together), killed when `signal` aborts. */
  version(binary: string, signal: AbortSignal): Promise<VersionOutput>;
  /** `tool`'s absolute path in /usr/sbin:/usr/bin:/sbin:/bin (bangerd's tools' PATH), or undefined. */
  findTool(tool: string): Promise<string | undefined>;
  /** net.ipv4.ip_forward where bangerd runs. */
  ipForwarding(): Promise<boolean>;
  /** Whether bangerd may listen on ports below 1024, and why. */
  lowPorts(): Promise<{ ok: boolean; why: string }>;
  /** IPv4 addresses of the interfaces where bangerd runs. */
  addresses(): Promise<readonly HostAddress[]>;
  freeSpace(dir: string): Promise<{ freeBytes: number; totalBytes: number }>;
  sshKey(): Promise<SshKeyState>;
}

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
/** What `banger kernel initramfs` makes banger's guest kit from (guest/kit.ts): programs, and the tools that bundle them. */
const KIT_TOOLS = [
  { tool: "qemu-ga", pkg: "qemu-guest-agent" },
  { tool: "dropbear", pkg: "dropbear-bin" },
  { tool: "dropbearkey", pkg: "dropbear-bin" },
  { tool: "patchelf", pkg: "patchelf" },
  { tool: "ldd", pkg: "libc-bin" },
] as const;
const MIN_FIRECRACKER = "1.8.0";
const GIB = 1024 ** 3;
const SPACE_FAIL_BYTES = 1 * GIB;
const SPACE_WARN_BYTES = 5 * GIB;
const HELPER_DOWN = "not checked: the privileged helper is not reachable";

/** "Firecracker v1.9.1" → "1.9.1"; "QEMU emulator version 7.2.5 (Debian …)" → "7.2.5"; undefined when absent. */
export function parseVmmVersion(vmm: VmmDriver, text: string): string | undefined {
  const pattern =
    vmm === "firecracker" ? /\bFirecracker v(\d+\.\d+\.\d+)\b/ : /\bQEMU emulator version (\d+\.\d+(?:\.\d+)?)/;
  return pattern.exec(text)?.[1];
}

/** Whether a Firecracker release is one banger drives (>= 1.8). */
export function firecrackerSupported(version: string): boolean {
  return compareVersions(version, MIN_FIRECRACKER) >= 0;
}

type Settled<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: Failure };
interface Failure {
  readonly message: string;
  readonly kind?: ErrorKind;
}

/** Runs `work` under its own deadline (and the call's cancellation); never rejects. */
function settle<T>(
  outer: AbortSignal,
  timeoutMs: number,
  work: (signal: AbortSignal) => Promise<T>,
): Promise<Settled<T>> {
  const signal = AbortSignal.any([outer, AbortSignal.timeout(timeoutMs)]);
  return new Promise((resolve) => {
    const onAbort = () =>
      resolve({
        ok: false,
        error: outer.aborted
          ? { message: "cancelled", kind: "cancelled" }
          : { message: `no answer within ${timeoutMs / 1000} s`, kind: "deadline-exceeded" },
      });
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    // Through then(): a probe that throws at once is settled like one that rejects.
    void Promise.resolve()
      .then(() => work(signal))
      .then(
        (value) => resolve({ ok: true, value }),
        (error: unknown) =>
          resolve({
            ok: false,
            error:
              error instanceof BangerError
                ? { message: error.message, kind: error.kind }
                : { message: error instanceof Error ? error.message : String(error) },
          }),
      )
      .finally(() => signal.removeEventListener("abort", onAbort));
  });
}

const check = (name: string, status: CheckStatus, detail: string, hint = ""): DoctorCheck => ({
  name,
  status,
  detail,
  hint: status === "ok" ? "" : hint,
});

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
        kvmCheck(kvm, vmm.value),
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

/** The binary bangerd's configuration names for `vmm` (doctor runs its --version). */
function configuredBinary(config: Pick<BangerConfig, "firecracker" | "qemu">, vmm: VmmDriver): string {
  return vmm === "firecracker" ? config.firecracker.binary : config.qemu.binary;
}

function settledValue<T>(settled: Settled<T> | undefined): T | undefined {
  return settled?.ok ? settled.value : undefined;
}

/** The kernel `vm create` without --kernel would boot for the default image, as the lifecycle resolves it. */
async function resolveDefaultKernel(
  deps: DoctorDeps,
  imageName: string,
): Promise<{ name: string; source: string; exists: boolean; hasKit: boolean | undefined } | undefined> {
  const local = await deps.catalog.image(imageName);
  const catalogKernel = CATALOG.find((entry) => entry.name === imageName)?.defaultKernel ?? "";
  let name: string | undefined;
  let source: string;
  if (local?.defaultKernel) [name, source] = [local.defaultKernel, `image ${imageName}'s kernel`];
  else if (catalogKernel) [name, source] = [catalogKernel, `the catalog's kernel for ${imageName}`];
  else if (deps.config.defaultKernel) [name, source] = [deps.config.defaultKernel, "default_kernel in config"];
  else [name, source] = [await deps.catalog.defaultKernel(), "the host default kernel"];
  if (name === undefined) return undefined;
  const exists = await deps.catalog.kernelExists(name);
  return { name, source, exists, hasKit: exists ? await deps.catalog.kernelHasKit?.(name) : undefined };
}

function kvmCheck(kvm: Settled<KvmAccess>, vmm: VmmDriver): DoctorCheck {
  // Firecracker needs KVM; QEMU falls back to TCG (slow, but it works).
  const lacking: CheckStatus = vmm === "firecracker" ? "fail" : "warn";
  const fallback = vmm === "firecracker" ? "Firecracker cannot run" : "QEMU falls back to TCG (much slower)";
  if (!kvm.ok) return check("kvm", lacking, `could not check /dev/kvm: ${kvm.error.message}`);
  const access = kvm.value;
  if (access.ok) return check("kvm", "ok", "bangerd (and so the VMM) can open /dev/kvm read-write");
  if (access.code === "ENOENT") {
    return check(
      "kvm",
      lacking,
      `/dev/kvm does not exist: ${fallback}`,
      "enable virtualization (VT-x/AMD-V) in the firmware and load kvm_intel or kvm_amd; inside a VM, enable nested virtualization",
    );
  }
  if (access.code === "EACCES" || access.code === "EPERM") {
    const group = access.group ?? "kvm";
    return check(
      "kvm",
      lacking,
      `bangerd's user cannot open /dev/kvm read-write: ${fallback}`,
      `add the owner to group ${group} (sudo usermod -aG ${group} ${access.user ?? "$USER"}), then restart bangerd`,
    );
  }
  return check("kvm", lacking, `cannot open /dev/kvm (${access.code}): ${fallback}`, "check /dev/kvm's permissions");
}

function vmmVersionCheck(
  found: Settled<VersionOutput>,
  vmm: VmmDriver,
  binary: string,
  configPath: string,
): DoctorCheck {
  const label = vmm === "firecracker" ? "Firecracker" : "QEMU";
  const key = vmm === "firecracker" ? "firecracker.binary" : "qemu.binary";
  const install =
    vmm === "firecracker"
      ? `install Firecracker >= 1.8 (github.com/firecracker-microvm/firecracker/releases) as ${binary}, or set ${key} in ${configPath}`
      : `install QEMU (e.g. sudo apt-get install qemu-system-x86) as ${binary}, or set ${key} in ${configPath}`;
  const fail = (detail: string, hint = install) => check("vmm-version", "fail", detail, hint);
  if (!found.ok) return fail(`${binary} --version: ${found.error.message}`);
  const output = found.value;
  switch (output.kind) {
    case "missing":
      return fail(`no ${label} at ${binary}`);
    case "not-executable":
      return fail(
        `${binary} is not executable by bangerd's user`,
        `make it executable (chmod 755 ${binary}), or ${install}`,
      );
    case "failed":
      return fail(`${binary} --version failed: ${output.message}`);
    case "output": {
      const version = parseVmmVersion(vmm, output.text);
      if (version === undefined) {
        const said = output.text.trim().split("\n")[0] ?? "";
        return fail(`${binary} --version printed no ${label} version${said ? ` ("${said.slice(0, 80)}")` : ""}`);
      }
      if (vmm === "firecracker" && !firecrackerSupported(version)) {
        return fail(`${label} ${version} at ${binary} is older than 1.8`);
      }
      return check("vmm-version", "ok", `${label} ${version} at ${binary}`);
    }
  }
}

/**
 * The VMM doctor checked is bangerd's configured binary; the one that runs is the helper's. When they
 * differ, an ok check turns into a warning that says which runs (a failing one stays as it is).
 */
function helperBinaryCheck(
  checked: DoctorCheck,
  vmm: VmmDriver,
  binary: string,
  helper: { readonly firecracker: string; readonly qemu: string } | undefined,
  configPath: string,
): DoctorCheck {
  const launched = helper ? (vmm === "firecracker" ? helper.firecracker : helper.qemu) : "";
  if (launched === "" || launched === binary || checked.status === "fail") return checked;
  const key = vmm === "firecracker" ? "firecracker.binary" : "qemu.binary";
  const other =
    vmm === "firecracker"
      ? `, or have the helper launch it (sudo banger system install --firecracker ${binary}, or dev up --firecracker)`
      : "";
  return check(
    "vmm-version",
    "warn",
    `${checked.detail}; but the helper launches ${launched}`,
    `set ${key} in ${configPath} to ${launched}${other}`,
  );
}

const START_HINT: Record<ServiceRole, string> = {
  orchestrator: "",
  privileged:
    "start it as root: sudo systemctl start banger-privileged.socket (installed), or sudo ./bin/banger dev up … (from a checkout)",
  "image-puller":
    "start it: sudo systemctl start banger-image-puller.service (installed), or ./bin/banger dev up … (from a checkout)",
};
const PRIVILEGES_HINT: Record<ServiceRole, string> = {
  orchestrator: "run bangerd as the owner user, not root (banger system install sets that up)",
  privileged: "",
  "image-puller":
    "run the image puller as an unprivileged user with no capabilities (banger system install sets that up)",
};

function describeIdentity(identity: ServiceIdentity, socket: string): string {
  return `${identity.version}, pid ${identity.pid}, uid ${identity.uid}, on ${socket}`;
}

function serviceCheck(health: ServiceHealth): DoctorCheck {
  const name = `service-${health.name}`;
  const identity = health.identity;
  if (!identity) {
    const error = health.error ?? { kind: "unavailable" as const, message: "no answer" };
    const hint =
      error.kind === "permission-denied"
        ? "the helper answers only the owner it was started for (--owner-uid): run bangerd as that user"
        : START_HINT[health.name];
    return check(name, "fail", `not reachable: ${error.message}`, hint);
  }
  // The helper's privileges are a check of their own (helper-privileges).
  if (!identity.privilegesOk && health.name !== "privileged") {
    return check(
      name,
      "warn",
      `${describeIdentity(identity, health.socket)}; ${identity.privilegesDetail}`,
      PRIVILEGES_HINT[health.name],
    );
  }
  return check(name, "ok", describeIdentity(identity, health.socket));
}

function serviceVersionsCheck(services: readonly ServiceHealth[], clientVersion: string): DoctorCheck {
  const reachable = services.filter((s) => s.identity !== undefined);
  const unreachable = services.filter((s) => s.identity === undefined).map((s) => s.name);
  const want = clientVersion || reachable[0]?.identity?.version || "";
  const versions = reachable.map((s) => `${s.name} ${s.identity?.version ?? ""}`);
  const left = unreachable.length > 0 ? ` (${unreachable.join(" and ")} not reachable)` : "";
  if (reachable.every((s) => s.identity?.version === want)) {
    return check(
      "service-versions",
      "ok",
      `${clientVersion ? "all run" : "the services run"} ${want}${clientVersion ? ", as this client does" : ""}${left}`,
    );
  }
  return check(
    "service-versions",
    "fail",
    `versions differ: ${[...versions, ...(clientVersion ? [`client ${clientVersion}`] : [])].join(", ")}${left}`,
    "run one banger version everywhere: restart the services after an upgrade and use the CLI of the same build",
  );
}

function helperPrivilegesCheck(helper: ServiceHealth | undefined, features: HostFeatures | undefined): DoctorCheck {
  const identity = helper?.identity;
  if (!identity) return check("helper-privileges", "warn", HELPER_DOWN);
  // Its owner is the uid VMMs run as, and the helper never runs one as root: every VM would fail at launch-vmm.
  if (features?.ownerUid === 0) {
    return check(
      "helper-privileges",
      "fail",
      "VMs cannot start: the helper's owner is root (a VMM never runs as root)",
      "start the helper for the user who runs VMs: from a checkout, sudo ./bin/banger dev up … from that user, or " +
        "dev up --owner USER as root; installed, sudo banger system install --owner USER",
    );
  }
  if (identity.privilegesOk)
    return check("helper-privileges", "ok", `uid ${identity.uid}: ${identity.privilegesDetail}`);
  return check(
    "helper-privileges",
    "fail",
    `uid ${identity.uid}: ${identity.privilegesDetail}`,
    "run the helper as root with CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_CHOWN, CAP_SETUID and CAP_SETGID (banger system install does; from a checkout: sudo ./bin/banger dev up …)",
  );
}

function featureChecks(features: HostFeatures | undefined): DoctorCheck[] {
  const each: [string, keyof HostFeatures, DoctorCheck, DoctorCheck][] = [
    [
      "tun",
      "tun",
      check("tun", "ok", "/dev/net/tun is present"),
      check("tun", "fail", "no /dev/net/tun: VMs cannot get a network interface", "sudo modprobe tun"),
    ],
    [
      "kernel-bridge",
      "bridge",
      check("kernel-bridge", "ok", "the kernel can make bridges"),
      check("kernel-bridge", "fail", "the kernel cannot make bridges (no bridge module)", "sudo modprobe bridge"),
    ],
    [
      "loop",
      "loop",
      check("loop", "ok", "/dev/loop-control is present"),
      check("loop", "fail", "no /dev/loop-control: root disks cannot be checked or patched", "sudo modprobe loop"),
    ],
    [
      "device-mapper",
      "deviceMapper",
      check(
        "device-mapper",
        "ok",
        "the kernel's device-mapper driver answers: root disks are dm-snapshots of the image",
      ),
      check(
        "device-mapper",
        "warn",
        "no /dev/mapper/control: root disks are full copies of the image (clone; reflinked where the file system can)",
        "sudo modprobe dm_snapshot, for copy-on-write root disks",
      ),
    ],
  ];
  return each.map(([name, key, ok, lacking]) => {
    if (features === undefined) return check(name, "warn", HELPER_DOWN);
    if (features[key]) return ok;
    if (key === "bridge" && features.modulesVisible === false) {
      // The helper's unit hides /lib/modules (ProtectKernelModules=yes): an installed module cannot be seen.
      return check(
        name,
        "warn",
        "no bridge module is loaded, and the helper cannot see the installed ones: the first VM loads it if the kernel has it",
        "sudo modprobe bridge, to be sure now",
      );
    }
    if (key === "deviceMapper" && features.deviceMapperDetail) {
      // Say why: a node without its driver (containers, libdevmapper) is not device-mapper.
      return { ...lacking, detail: lacking.detail.replace("no /dev/mapper/control", features.deviceMapperDetail) };
    }
    return lacking;
  });
}

function ipv4ToNumber(ip: string): number {
  return ip.split(".").reduce((acc, part) => acc * 256 + Number(part), 0);
}

/** [first, last] address numbers of the subnet `cidr` ("10.0.0.5/16") lies in. */
function subnetRange(cidr: string): [number, number] | undefined {
  const match = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(cidr);
  if (!match?.[1] || match[2] === undefined) return undefined;
  const size = 2 ** (32 - Number(match[2]));
  const first = Math.floor(ipv4ToNumber(match[1]) / size) * size;
  return [first, first + size - 1];
}

function bridgeCheck(
  found: Settled<readonly HostAddress[]>,
  network: { readonly bridge: string; readonly address: string },
  configPath: string,
): DoctorCheck {
  const { bridge, address } = network;
  if (!found.ok) return check("bridge", "warn", `could not list the host's addresses: ${found.error.message}`);
  const parsed = parseBridgeAddress(address);
  const wanted = `${parsed.address}/${parsed.prefixLength}`;
  const own = found.value.filter((a) => a.interface === bridge).map((a) => a.cidr);
  if (own.includes(wanted)) return check("bridge", "ok", `${bridge} is up with ${wanted}`);
  if (own.length > 0) {
    return check(
      "bridge",
      "warn",
      `${bridge} has ${own.join(", ")}, not ${wanted} (network.address)`,
      `set network.address in ${configPath} to its address, or delete it (sudo ip link del ${bridge}) while no VM runs`,
    );
  }
  const ours = subnetRange(wanted);
  const clash = found.value.find((a) => {
    const theirs = subnetRange(a.cidr);
    return a.interface !== bridge && ours && theirs && ours[0] <= theirs[1] && theirs[0] <= ours[1];
  });
  if (clash) {
    return check(
      "bridge",
      "fail",
      `${wanted} (network.address) overlaps ${clash.interface}'s ${clash.cidr}: guests would be unreachable`,
      `choose a subnet no other interface uses for network.address in ${configPath}`,
    );
  }
  return check("bridge", "ok", `${bridge} (${wanted}) is made when the first VM starts`);
}

function defaultImageCheck(
  found: Settled<{ readonly defaultKernel: string | null } | undefined>,
  name: string,
  configPath: string,
): DoctorCheck {
  if (!found.ok) return check("default-image", "warn", `could not look up image ${name}: ${found.error.message}`);
  if (found.value) return check("default-image", "ok", `${name} is local`);
  const entry = CATALOG.find((e) => e.name === name);
  if (entry) {
    return check(
      "default-image",
      "ok",
      `${name} is not local yet: pulled from ${entry.reference} on first use (the built-in ${TINY_IMAGE}, built here, ` +
        "when that registry is unreachable and the create names no image)",
    );
  }
  if (isKnownImageName(name)) return check("default-image", "ok", `${name} is built in: built here on first use`);
  return check(
    "default-image",
    "fail",
    `${name} (default_image) is neither local nor in the catalog (${CATALOG.map((e) => e.name).join(", ")})`,
    `banger image pull REFERENCE --name ${name}, or set default_image in ${configPath}`,
  );
}

function defaultKernelCheck(
  found: Settled<{ name: string; source: string; exists: boolean } | undefined>,
  host: { readonly version: string; readonly kernel: string } | undefined,
): DoctorCheck {
  if (!found.ok) return check("default-kernel", "warn", `could not look up the default kernel: ${found.error.message}`);
  const kernel = found.value;
  const importHint = (name: string) =>
    `banger kernel import ${name} DIR (a directory with vmlinux and initrd, or an unpacked distribution kernel package)`;
  if (!kernel && host) {
    return check(
      "default-kernel",
      "ok",
      `none imported yet: the first VM imports this host's kernel ${host.version} (${host.kernel}) and builds its initramfs`,
    );
  }
  if (!kernel) {
    return check(
      "default-kernel",
      "fail",
      "no kernel imported, and none installed on this host that banger can use: VMs have nothing to boot",
      `${importHint("NAME")}, or install one (Debian, Ubuntu: apt install linux-image-amd64)`,
    );
  }
  if (!kernel.exists) {
    return check(
      "default-kernel",
      "fail",
      `kernel ${kernel.name} (${kernel.source}) does not exist`,
      importHint(kernel.name),
    );
  }
  return check("default-kernel", "ok", `${kernel.name} (${kernel.source})`);
}

/**
 * The host side of banger's guest kit: the programs and tools `banger kernel initramfs` bundles it from, and
 * whether the default kernel's initrd has it (without it, guests have no agent, and images without an SSH
 * server cannot be reached).
 */
function guestKitCheck(
  toolPaths: ReadonlyMap<string, string | undefined>,
  found: Settled<{ name: string; exists: boolean; hasKit?: boolean | undefined } | undefined>,
): DoctorCheck {
  const missing = KIT_TOOLS.filter(({ tool }) => toolPaths.get(tool) === undefined);
  if (missing.length > 0) {
    return check(
      "guest-kit",
      "fail",
      `${missing.map((m) => m.tool).join(", ")} not found: 'banger kernel initramfs' cannot build the guest kit (agent, SSH server)`,
      `sudo apt-get install ${[...new Set(missing.map((m) => m.pkg))].join(" ")}`,
    );
  }
  const kernel = found.ok ? found.value : undefined;
  if (kernel?.exists && kernel.hasKit === false) {
    return check(
      "guest-kit",
      "warn",
      `kernel ${kernel.name}'s initrd has no guest kit: its guests have no agent (no health, no graceful stop through it) and images without an SSH server cannot be reached`,
      `banger kernel initramfs ${kernel.name}`,
    );
  }
  return check(
    "guest-kit",
    "ok",
    `qemu-ga and dropbear at ${toolPaths.get("qemu-ga")} and ${toolPaths.get("dropbear")}${kernel?.hasKit ? `; kernel ${kernel.name}'s initrd has the kit` : ""}`,
  );
}

function sshKeyCheck(found: Settled<SshKeyState>, configPath: string): DoctorCheck {
  if (!found.ok) return check("ssh-key", "warn", `could not read the SSH key: ${found.error.message}`);
  const key = found.value;
  const whose = key.managed ? "banger's own key" : "ssh.private_key";
  switch (key.kind) {
    case "ok":
      return check("ssh-key", "ok", `${whose} ${key.path} (${key.fingerprint})`);
    case "missing":
      return key.managed
        ? check("ssh-key", "ok", `not made yet: banger makes ${key.path} when the first VM is created`)
        : check(
            "ssh-key",
            "fail",
            `${whose} ${key.path} does not exist`,
            `point ssh.private_key in ${configPath} at an ed25519 key (ssh-keygen -t ed25519 -N ''), or remove it to use banger's own`,
          );
    case "unusable":
      return check(
        "ssh-key",
        "fail",
        key.message,
        key.managed
          ? `fix ${key.path} as said (VMs already made trust this key)`
          : `fix it as said, or point ssh.private_key in ${configPath} at another key`,
      );
  }
}

function formatBytes(bytes: number): string {
  return bytes >= GIB ? `${(bytes / GIB).toFixed(1)} GiB` : `${Math.floor(bytes / 1024 ** 2)} MiB`;
}

function spaceCheck(found: Settled<{ freeBytes: number; totalBytes: number }>, stateDir: string): DoctorCheck {
  if (!found.ok) return check("state-dir-space", "warn", `could not measure ${stateDir}: ${found.error.message}`);
  const { freeBytes, totalBytes } = found.value;
  const detail = `${formatBytes(freeBytes)} free of ${formatBytes(totalBytes)} in ${stateDir}`;
  const hint = "free space there, or delete images and VMs you no longer need (banger image delete, banger vm delete)";
  if (freeBytes < SPACE_FAIL_BYTES)
    return check("state-dir-space", "fail", `only ${detail}: images cannot be pulled`, hint);
  if (freeBytes < SPACE_WARN_BYTES)
    return check("state-dir-space", "warn", `only ${detail}: an image or a few VMs fill it`, hint);
  return check("state-dir-space", "ok", detail);
}
