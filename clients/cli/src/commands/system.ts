import { realpathSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import { ReportedFailure, UsageError } from "../errors.js";
import { createSystemHost } from "../system/host.js";
import { RefusedError, install, requireSystemd, restart, uninstall, type SystemContext } from "../system/install.js";
import { SYSTEM_PATHS } from "../system/layout.js";
import { readMetadata } from "../system/metadata.js";
import { healthy, renderStatusJson, renderStatusTable, systemStatus } from "../system/status.js";
import type { LiveStatus } from "../system/health.js";

/**
 * The code the units run: the checkout this CLI was built in
 * (clients/cli/dist/banger.js → the repository root), symlinks resolved.
 */
function runningCode(): { codeDir: string; node: string } {
  const codeDir = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
  return { codeDir: realpathSync(codeDir), node: realpathSync(process.execPath) };
}

function context(): SystemContext {
  return {
    host: createSystemHost(),
    ...runningCode(),
    env: process.env,
    say: (line) => process.stdout.write(`${line}\n`),
    healthTimeoutMs: 60_000,
  };
}

const STATUS_TIMEOUT_MS = 10_000;

function printLive(live: LiveStatus): void {
  for (const s of live.services) {
    process.stdout.write(`  ${s.name.padEnd(12)} up  ${s.version}  pid ${s.pid}  uid ${s.uid}  ${s.detail}\n`);
  }
  process.stdout.write(`op id: ${live.opId}\n`);
}

function absolute(dir: string | undefined, flag: string): string | undefined {
  if (dir === undefined) return undefined;
  if (dir === "") throw new UsageError(`${flag} needs a directory`);
  return resolve(dir);
}

/** `system install`, `status`, `restart`, `uninstall`. */
export function registerSystemCommands(system: Command): void {
  system
    .command("install")
    .description(
      "install banger's units for an owner, create the banger group, the banger-puller user and the state layout, " +
        "set net.ipv4.ip_forward, enable and start the units and wait until all three services answer; " +
        "the units run this checkout's code with this node; running it again upgrades in place",
    )
    .option("--owner <user>", "the user whose banger this is (default: the user behind sudo)")
    .option("--firecracker <path>", "the Firecracker binary the helper launches", "/usr/local/bin/firecracker")
    .option(
      "--dns-address <ip>",
      "the bridge's address, where systemd binds port 53 for bangerd's .vm DNS (default: network.address in the " +
        "owner's ~/.config/banger/config.toml without its prefix, else 172.30.0.1)",
    )
    .option(
      "--root <dir>",
      "write everything into the directory tree DIR instead of / (for packaging and tests): units, metadata, sysctl " +
        "and sysusers files, accounts in DIR/etc, the state layout; enables the units there; touches nothing of the " +
        "running system (no daemon-reload, no start, no sysctl) and works without systemd running",
    )
    .action(async (opts: { owner?: string; firecracker: string; dnsAddress?: string; root?: string }) => {
      const root = absolute(opts.root, "--root");
      const live = await install(context(), {
        firecracker: resolve(opts.firecracker),
        ...(opts.dnsAddress === undefined ? {} : { dnsAddress: opts.dnsAddress }),
        ...(opts.owner === undefined ? {} : { owner: opts.owner }),
        ...(root === undefined ? {} : { root }),
      });
      if (live) {
        process.stdout.write("installed; all three services answer:\n");
        printLive(live);
      }
    });

  system
    .command("status")
    .description(
      "each unit's systemd state and a live check of the three services through bangerd's socket " +
        "(version, pid, uid, privileges, op id); exits 1 unless every unit is active and every service answers",
    )
    .option("--json", "print JSON instead of tables")
    .action(async (opts: { json?: boolean }) => {
      const ctx = context();
      requireSystemd(ctx, "status", false);
      const metadata = readMetadata(SYSTEM_PATHS.metadataFile);
      if (!metadata) {
        throw new RefusedError(
          `banger is not installed as system services here (no ${SYSTEM_PATHS.metadataFile}): sudo banger system install`,
        );
      }
      const status = await systemStatus(ctx.host, metadata, STATUS_TIMEOUT_MS);
      process.stdout.write(opts.json ? renderStatusJson(status) : renderStatusTable(status));
      if (!healthy(status)) throw new ReportedFailure("not every unit is active or not every service answers");
    });

  system
    .command("restart")
    .description("restart the helper and the puller, then bangerd, and wait until all three answer (root)")
    .action(async () => {
      const live = await restart(context());
      printLive(live);
    });

  system
    .command("uninstall")
    .description(
      "stop, disable and remove the units, the metadata, the sysctl and sysusers files and the warm-pool taps; keeps " +
        `${SYSTEM_PATHS.stateDir} (images, VMs), ${SYSTEM_PATHS.cacheDir} and the bridge unless --purge (root)`,
    )
    .option(
      "--purge",
      "also delete the state and the caches (every image, VM disk and cached blob), the bridge and the NAT table; " +
        "refused while a VM has files in /run/banger/vms",
    )
    .option("--root <dir>", "remove what `install --root DIR` wrote into DIR; touches nothing of the running system")
    .action((opts: { purge?: boolean; root?: string }) => {
      const root = absolute(opts.root, "--root");
      uninstall(context(), { purge: opts.purge === true, ...(root === undefined ? {} : { root }) });
    });
}
