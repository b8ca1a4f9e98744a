/**
 * The orchestrator's durable state (DESIGN §5): what VMs, images, kernels and
 * operations *are*, in one SQLite file. The rest of the orchestrator uses these
 * functions and never writes SQL; what is currently true on the host is not here.
 */
export { openStore, type Store } from "./database.js";
export type { Database } from "./schema.js";
export { inTransaction } from "./transaction.js";
export { MIGRATIONS } from "./migrations.js";
export type { JsonObject, JsonValue } from "./columns.js";
export * from "./vm-repository.js";
export * from "./image-repository.js";
export * from "./kernel-repository.js";
export * from "./operation-repository.js";
export * from "./operation-result.js";
export * from "./snapshot-repository.js";
