/** The result of a VM's operations: the VM as the operation left it. */
import type { OperationResult } from "../../store/index.js";
import type { VmContext } from "./context.js";

/** The result of an operation on VM `name`: the VM as it is now. */
export async function vmResult(ctx: VmContext, name: string): Promise<OperationResult> {
  return { kind: "vm", vm: ctx.runtime.view(await ctx.find(name)) };
}
