/** Row of `operations`: one unit of long work, kept after it ends. */
export interface OperationTable {
  /** Primary key: the op id of the call that began it, `op-` + 12 hex. */
  id: string;
  /** e.g. "create-vm", "pull-image". */
  kind: string;
  /** "pending" | "running" | "succeeded" | "failed" | "cancelled". */
  state: string;
  /** The VM, image or kernel name it acts on. */
  target: string;
  /** JSON array of stages, in order. */
  stages: string;
  /** JSON object: what it produced, once succeeded: `{kind: "vm", vm: {…}}` and so on (operation-result.ts). */
  result: string | null;
  /** JSON object {code, reason, message, …}, once failed or cancelled. */
  error: string | null;
  created_at: string;
  updated_at: string;
  /** Null while it runs. */
  ended_at: string | null;
}
