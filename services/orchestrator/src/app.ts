import { readdir, rm } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import {
  BANGER_VERSION,
  DNS_FD_NAME,
  activatedFds,
  createProcessCredentialHelper,
  defaultDockerConfigPath,
  findCredentials,
  type Logger,
} from "@banger/common";
import { stateLayout } from "@banger/common/layout";
import { ExecService, file_banger_v1_exec } from "@banger/gen/banger/v1/exec_pb.js";
import { ImageService, file_banger_v1_image } from "@banger/gen/banger/v1/image_pb.js";
import { KernelService, file_banger_v1_kernel } from "@banger/gen/banger/v1/kernel_pb.js";
import { OperationService, file_banger_v1_operation } from "@banger/gen/banger/v1/operation_pb.js";
import { SystemService, file_banger_v1_system } from "@banger/gen/banger/v1/system_pb.js";
import { VmService, file_banger_v1_vm } from "@banger/gen/banger/v1/vm_pb.js";
import { WorkspaceService, file_banger_v1_workspace } from "@banger/gen/banger/v1/workspace_pb.js";
import type { DescFile } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import type { Kysely } from "kysely";
import {
  defaultConfigDir,
  ensureSshIdentity,
  sshIdentityPaths,
  type BangerConfig,
  type SshIdentity,
} from "./config/index.js";
import { knownHostsPath } from "./core/vm-observe.js";
import { createImageCatalog } from "./core/images.js";
import { dnsCapability, natCapability, workDiskDoctorChecks } from "./core/capabilities.js";
import { createDoctor, storeCatalog } from "./core/doctor.js";
import { createKernelCatalog, findHostKernel } from "./core/kernels.js";
import { createPruner } from "./core/prune.js";
import { createVmService as createVmLifecycle } from "./core/vms.js";
import { createWorkspaces } from "./core/workspaces.js";
import { createDnsResponder, type DnsResponder } from "./dns/index.js";
import { createGuestPort } from "./guest/port.js";
import { createFirecrackerClient } from "./vmm/firecracker-client.js";
import { createQmpClient } from "./vmm/qmp-client.js";
import { createVmmPorts } from "./vmm/drivers.js";
import { createOperations } from "./core/operations.js";
import { describeOrchestrator } from "./core/status.js";
import { createDoctorProbes } from "./host/doctor-probes.js";
import { createPrivilegedPeer, type PrivilegedPeer } from "./peers/privileged.js";
import { createPullerPeer } from "./peers/puller.js";
import { createExecService } from "./rpc/exec-service.js";
import { createImageService } from "./rpc/image-service.js";
import { createKernelService } from "./rpc/kernel-service.js";
import { createVmService } from "./rpc/vm-service.js";
import { createOperationService } from "./rpc/operation-service.js";
import { createSystemService } from "./rpc/system-service.js";
import { measureCapacity } from "./core/capacity.js";
import { createWorkspaceService } from "./rpc/workspace-service.js";
import { listVms, type Database } from "./store/index.js";

export interface OrchestratorConfig {
  readonly socketPath: string;
  readonly privilegedSocket: string;
  readonly pullerSocket: string;
  readonly db: Kysely<Database>;
  readonly logger: Logger;
  readonly stateDir: string;
  /** banger's runtime directory (VMM sockets and logs under `vms/<id>/`). */
  readonly runtimeDir: string;
  readonly config: BangerConfig;
  /** Stages that fail right after their work (tests only; see createOperations). */
  readonly failAfterStages?: ReadonlySet<string>;
  /** Stages that wait this many ms before their work (tests only; see createOperations). */
  readonly delayStages?: ReadonlyMap<string, number>;
}

/**
 * Staging directories are only ever in use by a running operation; at
 * start-up none runs, so whatever is there was cut off by a crash or a kill.
 */
async function clearStaging(stateDir: string, logger: Logger): Promise<void> {
  const layout = stateLayout(stateDir);
  for (const root of [layout.imageStagingDir, layout.kernelStagingDir]) {
    const entries = await readdir(root).catch(() => []);
    for (const entry of entries) await rm(join(root, entry), { recursive: true, force: true });
    if (entries.length > 0) logger.info({ dir: root, removed: entries }, "removed staging left by an earlier run");
  }
}

/** The port `<name>.vm` queries are answered on, on the bridge address. */
const DNS_PORT = 53;

export interface Orchestrator {
  readonly files: readonly DescFile[];
  readonly routes: (router: ConnectRouter, logger: Logger) => void;
  /** Stops what runs beside the RPC server (the DNS responder). */
  readonly stop: () => Promise<void>;
}

/**
 * The composition root: every dependency is built here, once, and passed in
 * explicitly. Operations a restart cut off are marked INTERRUPTED first.
 */
export async function createOrchestrator(config: OrchestratorConfig): Promise<Orchestrator> {
  const operations = createOperations({
    db: config.db,
    logger: config.logger,
    ...(config.failAfterStages ? { failAfterStages: config.failAfterStages } : {}),
    ...(config.delayStages ? { delayStages: config.delayStages } : {}),
  });
  await operations.recover();
  await clearStaging(config.stateDir, config.logger);
  const privileged = createPrivilegedPeer(config.privilegedSocket, config.config.vm.logMaxMib * 1024 * 1024);
  const puller = createPullerPeer(config.pullerSocket);
  const credentialHelper = createProcessCredentialHelper();
  const images = createImageCatalog({
    db: config.db,
    stateDir: config.stateDir,
    puller,
    operations,
    logger: config.logger,
    credentials: (registry, signal) =>
      findCredentials(defaultDockerConfigPath(process.env, homedir()), registry, credentialHelper, signal),
    pullDefaults: {
      insecureRegistries: config.config.registries.insecure,
      minRootfsMib: config.config.image.minRootfsMib,
    },
  });
  const kernels = createKernelCatalog({
    db: config.db,
    stateDir: config.stateDir,
    operations,
    logger: config.logger,
  });
  const home = homedir();
  let identity: Promise<SshIdentity> | undefined;
  const sshIdentity = () =>
    (identity ??= ensureSshIdentity({
      configDir: defaultConfigDir(process.env, home),
      configuredKeyPath: config.config.ssh.privateKey,
    }).catch((error: unknown) => {
      identity = undefined;
      throw error;
    }));
  const dns = createDnsResponder({ lookup: (name) => names.resolve(name), logger: config.logger });
  const names = dnsNames(config, dns, privileged);
  const capabilities = [natCapability(privileged, config.config.network.bridge, config.config.vm.nat), names];
  const vms = createVmLifecycle({
    db: config.db,
    logger: config.logger,
    operations,
    stateDir: config.stateDir,
    config: config.config,
    images,
    kernels,
    host: privileged,
    vmm: createVmmPorts(
      privileged,
      (socket) => createFirecrackerClient(socket),
      (socket) => createQmpClient(socket),
    ),
    guest: createGuestPort({ config: config.config, home, sshIdentity }),
    runtimeDir: config.runtimeDir,
    ssh: {
      identityFile: async () => (await sshIdentity()).privateKeyPath,
      knownHostsFile: knownHostsPath(sshIdentityPaths(defaultConfigDir(process.env, home)).dir),
    },
    capabilities,
  });
  await vms.recover();
  const workspaces = createWorkspaces({ vms, operations, stateDir: config.stateDir, home, logger: config.logger });
  await workspaces.recover();
  const self = () => ({
    name: "orchestrator" as const,
    socket: config.socketPath,
    identity: describeOrchestrator(BANGER_VERSION),
  });
  const doctor = createDoctor({
    config: config.config,
    stateDir: config.stateDir,
    self,
    peers: [privileged, puller],
    features: (scope) => privileged.features(scope),
    probes: createDoctorProbes({
      configDir: defaultConfigDir(process.env, home),
      configuredKeyPath: config.config.ssh.privateKey,
    }),
    catalog: storeCatalog(
      config.db,
      (name) => kernels.dir(name),
      () => findHostKernel(),
    ),
    // The lifecycle makes the work disk's capability itself; its checks need none of its state.
    capabilities: [{ name: "work-disk", dependsOn: [], doctorChecks: workDiskDoctorChecks }, ...capabilities],
  });

  const pruner = createPruner({
    db: config.db,
    images,
    kernels,
    puller,
    retentionDays: config.config.operations.retentionDays,
    logger: config.logger,
  });
  // Operation history is kept for the retention: pruned now and once a day while bangerd runs.
  const pruneOperations = () =>
    void pruner
      .pruneOperations()
      .catch((error: unknown) => config.logger.warn({ err: error }, "pruning old operations failed"));
  pruneOperations();
  const dailyPrune = setInterval(pruneOperations, 24 * 60 * 60 * 1000).unref();

  return {
    stop: async () => {
      clearInterval(dailyPrune);
      vms.closeConnections();
      await dns.close();
    },
    files: [
      file_banger_v1_system,
      file_banger_v1_vm,
      file_banger_v1_operation,
      file_banger_v1_image,
      file_banger_v1_kernel,
      file_banger_v1_workspace,
      file_banger_v1_exec,
    ],
    routes: (router) => {
      router.service(
        SystemService,
        createSystemService({
          self,
          peers: [privileged, puller],
          doctor,
          pruner,
          capacity: async () => measureCapacity(config.stateDir, await listVms(config.db)),
        }),
      );
      router.service(
        ImageService,
        createImageService(images, (vm, name) => vms.promote(vm, name)),
      );
      router.service(OperationService, createOperationService(operations));
      router.service(KernelService, createKernelService(kernels));
      router.service(VmService, createVmService(vms));
      router.service(WorkspaceService, createWorkspaceService(workspaces));
      router.service(ExecService, createExecService(vms));
    },
  };
}

/**
 * `<name>.vm` answered on the bridge address once the bridge exists. Port 53 comes bound from
 * systemd when installed (bangerd-dns.socket); else bangerd binds it if it may. Without it VMs
 * still run, unnamed.
 */
function dnsNames(
  config: OrchestratorConfig,
  dns: DnsResponder,
  privileged: PrivilegedPeer,
): ReturnType<typeof dnsCapability> {
  return dnsCapability(async (network) => {
    try {
      // Installed, systemd passes the sockets bound as root (bangerd-dns.socket); `dev up` as root does the
      // same (with LISTEN_FDS); else bind them here.
      const [udpFd, tcpFd] = activatedFds(DNS_FD_NAME);
      const passed = udpFd !== undefined && tcpFd !== undefined;
      if (passed) {
        const bound = await dns.listenOnFds({ udp: udpFd, tcp: tcpFd });
        if (bound.address !== network.address) {
          config.logger.warn(
            { passed: bound, bridge: network.address },
            "the DNS sockets systemd passes are not on the bridge's address: rerun 'banger system install'",
          );
        }
      } else {
        await dns.listen(network.address, DNS_PORT);
      }
      // passed: on sockets bound for it as root (the units, dev up), not bound here.
      config.logger.info({ address: network.address, port: DNS_PORT, passed }, "DNS responder for .vm listening");
      // The host's own lookups of <name>.vm go to it too, where systemd-resolved runs.
      await privileged
        .configureResolver(config.config.network.bridge, network.address, { signal: AbortSignal.timeout(10_000) })
        .catch((error: unknown) =>
          config.logger.warn(
            { err: error },
            "could not route .vm through systemd-resolved: the host cannot resolve <name>.vm",
          ),
        );
      return { name: "dns", ok: true, detail: `answering <name>.vm on ${network.address}:${DNS_PORT}` };
    } catch (error) {
      config.logger.warn(
        { err: error, address: network.address, port: DNS_PORT },
        "DNS responder could not listen: <name>.vm names will not resolve",
      );
      return { name: "dns", ok: false, detail: `cannot listen on ${network.address}:${DNS_PORT}: ${String(error)}` };
    }
  });
}
