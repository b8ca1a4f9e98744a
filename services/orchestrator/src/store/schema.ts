import type { ImageTable } from "./image.table.js";
import type { KernelTable } from "./kernel.table.js";
import type { OperationTable } from "./operation.table.js";
import type { SnapshotTable } from "./snapshot.table.js";
import type { VmTable } from "./vm.table.js";

/** The tables of the orchestrator's database, as the latest migration leaves them. */
export interface Database {
  vms: VmTable;
  images: ImageTable;
  kernels: KernelTable;
  operations: OperationTable;
  snapshots: SnapshotTable;
}

export type TableName = keyof Database;
