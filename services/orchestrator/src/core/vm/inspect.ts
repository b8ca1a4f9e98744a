/** Looking at a VM without changing it: its logs, resource use, and how to reach it (ssh, Exec). */
import { readFile } from "node:fs/promises";
import { FailedPreconditionError } from "@banger/common";
import { getVmById, type VmRecord } from "../../store/index.js";
import type { GuestTarget } from "../guest-exec.js";
import { measureVm, readLog, sshTarget, type SshTarget, type VmUsage } from "../vm-observe.js";
import type { VmContext } from "./context.js";
import type { Handles } from "./model.js";
import { pausedError } from "./pause.js";

/** A running VM and its handles; VM_NOT_RUNNING when it is not running. */
async function running(ctx: VmContext, name: string): Promise<{ vm: VmRecord; handle: Handles }> {
  const vm = await ctx.find(name);
  const handle = ctx.runtime.handles.get(vm.id);
  if (!handle) throw new FailedPreconditionError(`VM ${name} is not running`, { reason: "VM_NOT_RUNNING" });
  return { vm, handle };
}

export async function vmLogs(
  ctx: VmContext,
  name: string,
  options: { source: "console" | "vmm"; tailLines: number; follow: boolean; signal: AbortSignal },
): Promise<AsyncIterable<Buffer>> {
  const vm = await ctx.find(name);
  const paths = ctx.run.vm(vm.id);
  return readLog(options.source === "vmm" ? paths.vmmLog : paths.consoleLog, {
    tailLines: options.tailLines,
    follow: options.follow,
    signal: options.signal,
    stillThere: async () => (await getVmById(ctx.db, vm.id)) !== undefined,
  });
}

export async function vmStats(ctx: VmContext, name: string): Promise<VmUsage & { uptimeMs: number }> {
  const { vm, handle } = await running(ctx, name);
  const startTime = new Date(handle.startTime);
  const scope = { signal: AbortSignal.timeout(10_000) };
  const paths = ctx.state.vm(vm.id);
  const usage = await measureVm(() => ctx.host.vmmState(vm.id, handle.pid, startTime, scope), {
    root: paths.rootDisk,
    work: paths.workDisk,
  });
  return { ...usage, uptimeMs: vm.startedAt ? Date.now() - vm.startedAt.getTime() : 0 };
}

export async function vmSshTarget(ctx: VmContext, name: string): Promise<SshTarget> {
  const { vm, handle } = await running(ctx, name);
  if (handle.paused) throw pausedError(name);
  return sshTarget(vm, await ctx.ssh.identityFile(), ctx.ssh.knownHostsFile);
}

export async function vmGuestTarget(ctx: VmContext, name: string): Promise<GuestTarget> {
  const { vm, handle } = await running(ctx, name);
  if (handle.paused) throw pausedError(name);
  return guestTargetOf(ctx, vm, handle);
}

/** How commands reach `vm` running under `handle`; they share a kept connection for as long as this VMM runs. */
export async function guestTargetOf(ctx: VmContext, vm: VmRecord, handle: Handles): Promise<GuestTarget> {
  const target = sshTarget(vm, await ctx.ssh.identityFile(), ctx.ssh.knownHostsFile);
  return {
    host: target.host,
    port: target.port,
    hostKeyAlias: target.hostKeyAlias,
    privateKey: await readFile(target.identityFile),
    knownHostsFile: target.knownHostsFile,
    reuse: { key: `${vm.id}/${handle.pid}/${handle.startTime}`, connections: ctx.connections },
  };
}
