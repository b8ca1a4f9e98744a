/**
 * What this host gives a new VM, asked of the helper once per orchestrator
 * run (a failure is retried by the next create): its root-disk strategy, and
 * its VMM when the config says "auto".
 */
import type { Logger } from "@banger/common";
import type { BangerConfig, VmmDriver as VmmKind } from "../../config/index.js";
import type { CallScope } from "../call-scope.js";
import { chooseRootDiskStrategy, chooseVmm, vmmBinariesPresent, type RootDiskStrategy } from "../host-choices.js";
import type { HostPort } from "../ports.js";

export interface NewVmChoices {
  rootDiskStrategy(scope: CallScope): Promise<RootDiskStrategy>;
  /** The configured VMM, or for "auto" this host's choice. */
  vmm(scope: CallScope): Promise<VmmKind>;
}

/** `work` once, kept; forgotten when it fails, so the next call asks again (with its own scope). */
function once<T>(work: (scope: CallScope) => Promise<T>): (scope: CallScope) => Promise<T> {
  let kept: Promise<T> | undefined;
  return (scope) =>
    (kept ??= work(scope).catch((error: unknown) => {
      kept = undefined;
      throw error;
    }));
}

export function createNewVmChoices(deps: {
  readonly host: HostPort;
  readonly config: BangerConfig;
  readonly logger: Logger;
}): NewVmChoices {
  const { host, config, logger } = deps;
  const autoVmm = once(async (scope) => {
    const features = await host.features(scope);
    const binaries = features.vmmBinaries ?? { firecracker: config.firecracker.binary, qemu: config.qemu.binary };
    const choice = chooseVmm("auto", features, await vmmBinariesPresent(binaries));
    logger.info({ vmm: choice.value, why: choice.why }, "vmm = auto: new VMs use " + choice.value);
    return choice.value;
  });
  return {
    rootDiskStrategy: once(async (scope) => chooseRootDiskStrategy(await host.features(scope)).value),
    vmm: (scope) => (config.vmm !== "auto" ? Promise.resolve(config.vmm) : autoVmm(scope)),
  };
}
