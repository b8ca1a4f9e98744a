/**
 * Addresses a new VM gets: a guest IPv4 from the bridge's subnet, a MAC and
 * a vsock CID, each unique on the host. Pure functions over what is taken;
 * the reservation lock and the store's unique constraints make them stick.
 */
import { createHash } from "node:crypto";
import { InvalidArgumentError, ResourceExhaustedError } from "@banger/common";

export interface BridgeNetwork {
  /** The bridge's own address, e.g. "172.30.0.1": the guests' gateway and DNS server. */
  readonly address: string;
  readonly prefixLength: number;
  /** "255.255.255.0" for /24. */
  readonly netmask: string;
}

const toNumber = (ip: string): number => ip.split(".").reduce((n, part) => n * 256 + Number(part), 0);
const toIp = (n: number): string => [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join(".");

/** "172.30.0.1/24" → the bridge network (the config has validated the form). */
export function parseBridgeAddress(cidr: string): BridgeNetwork {
  const [address = "", prefix = ""] = cidr.split("/");
  const prefixLength = Number(prefix);
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(address) || !Number.isInteger(prefixLength)) {
    throw new InvalidArgumentError(`bridge address ${cidr} is not IPv4/prefix`, { reason: "INVALID_CONFIG" });
  }
  const mask = prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0;
  return { address, prefixLength, netmask: toIp(mask) };
}

/** The lowest free guest address of the subnet (not the network, broadcast or bridge address). */
export function allocateGuestIp(network: BridgeNetwork, taken: ReadonlySet<string>): string {
  const size = 2 ** (32 - network.prefixLength);
  const base = toNumber(network.address) - (toNumber(network.address) % size);
  for (let n = base + 1; n < base + size - 1; n++) {
    const ip = toIp(n);
    if (ip !== network.address && !taken.has(ip)) return ip;
  }
  throw new ResourceExhaustedError(`no free guest address left in ${network.address}/${network.prefixLength}`, {
    reason: "NO_FREE_ADDRESS",
  });
}

/** A locally administered unicast MAC derived from the VM id (`02:` + 5 bytes), unique among `taken`. */
export function allocateMac(vmId: string, taken: ReadonlySet<string>): string {
  for (let attempt = 0; ; attempt++) {
    const bytes = createHash("sha256").update(`${vmId}/${attempt}`).digest().subarray(0, 5);
    const mac = ["02", ...[...bytes].map((b) => b.toString(16).padStart(2, "0"))].join(":");
    if (!taken.has(mac)) return mac;
  }
}

/** The lowest vsock CID ≥ 3 (0-2 are reserved) not in `taken`. */
export function allocateVsockCid(taken: ReadonlySet<number>): number {
  let cid = 3;
  while (taken.has(cid)) cid++;
  return cid;
}
