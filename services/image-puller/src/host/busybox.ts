import { runProcess } from "@banger/common/host-runner";
import { DEFAULT_BUSYBOX, readStaticBusybox } from "@banger/common/static-busybox";
import type { Busybox } from "../core/ports.js";

/** The host's static busybox at `path` (default /bin/busybox): its bytes, and its applets as it lists them. */
export function createHostBusybox(path: string = DEFAULT_BUSYBOX): Busybox {
  return {
    path,
    read: () => readStaticBusybox(path),
    applets: async (signal) => (await runProcess([path, "--list-full"], { signal })).stdout.toString().split("\n"),
  };
}
