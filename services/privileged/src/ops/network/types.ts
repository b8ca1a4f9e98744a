/** The shapes NetworkService speaks in, as the ops see them, and what the ops work with. */
import type { Runner } from "@banger/common/host-runner";
import type { HelperConfig } from "../../config.js";

export type LinkKind = "bridge" | "tap";

/** A link banger made, with only the fields that stay the same while nothing changes it. */
export interface LinkInfo {
  readonly name: string;
  readonly kind: LinkKind;
  /** The VM a tap belongs to; empty for the bridge and warm-pool taps. */
  readonly vmId: string;
  readonly ownerUid: number;
  readonly master: string;
  /** IPv4 addresses in CIDR form. */
  readonly addresses: readonly string[];
  readonly up: boolean;
}

export interface NatRuleInfo {
  readonly vmId: string;
  readonly guestAddress: string;
}

export interface NetworkDeps {
  readonly runner: Runner;
  readonly config: HelperConfig;
  /** Whether systemd-resolved runs (host feature probe). */
  readonly resolvedPresent: () => boolean;
}
