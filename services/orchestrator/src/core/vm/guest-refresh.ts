/**
 * The owner's configuration reaching existing VMs: before each start and restart, banger's files (the SSH key,
 * git's identity, file_sync) are written onto the stopped VM's work disk again, as the config and the owner's
 * files are now, so a changed key or file_sync entry reaches VMs made before the change. A failure to do so
 * (a file_sync source gone or over a limit, a path the guest turned into something else) does not keep the VM
 * from booting with what its disk holds: it is a note on the stage and a warning in the log.
 */
import type { OperationContext } from "../operations.js";
import type { VmRecord } from "../../store/index.js";
import type { VmContext } from "./context.js";

export async function refreshGuestFiles(ctx: VmContext, op: OperationContext, vm: VmRecord): Promise<void> {
  await op.stage("work-files", async () => {
    try {
      await ctx.guest.refreshWorkDisk(ctx.state.vm(vm.id).workDisk, op.signal);
    } catch (error) {
      if (op.signal.aborted) throw error;
      const reason = (error as { reason?: string }).reason;
      const note = `banger's files were not written again (${(error as Error).message}${reason ? `, ${reason}` : ""}); the VM boots with what its work disk holds`;
      ctx.logger.warn({ vm: vm.name, err: error }, note);
      await op.note("work-files", note);
    }
  });
}
