/** The privileged helper's port and its types; declared with the other ports in ports.ts. */
export type {
  GuestFileSpec,
  HostFeatures,
  HostInventory,
  HostPort,
  LaunchedVmm,
  QemuMachine,
  VmmState,
} from "./ports.js";
