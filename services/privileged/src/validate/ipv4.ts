import { InvalidArgumentError } from "@banger/common/errors";

/** An IPv4 address as a 32-bit unsigned number, with its dotted form. */
export interface Ipv4 {
  readonly text: string;
  readonly value: number;
}

export interface Ipv4Cidr {
  readonly address: Ipv4;
  readonly prefix: number;
  /** First address of the subnet. */
  readonly network: number;
  /** Last address of the subnet. */
  readonly broadcast: number;
}

const DOTTED = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export function parseIpv4(text: string, field: string): Ipv4 {
  if (!DOTTED.test(text)) {
    throw new InvalidArgumentError(`${field} must be a dotted IPv4 address`, { reason: "INVALID_ADDRESS" });
  }
  const value = text.split(".").reduce((acc, part) => acc * 256 + Number(part), 0);
  return { text, value };
}

/** `a.b.c.d/p` with a host address (not the network or broadcast address) and `minPrefix ≤ p ≤ maxPrefix`. */
export function parseHostCidr(text: string, field: string, minPrefix: number, maxPrefix: number): Ipv4Cidr {
  const [addressText, prefixText, ...rest] = text.split("/");
  if (addressText === undefined || prefixText === undefined || rest.length > 0 || !/^\d{1,2}$/.test(prefixText)) {
    throw new InvalidArgumentError(`${field} must be IPv4 CIDR such as 172.30.0.1/24`, { reason: "INVALID_ADDRESS" });
  }
  const prefix = Number(prefixText);
  if (prefix < minPrefix || prefix > maxPrefix) {
    throw new InvalidArgumentError(`${field} prefix must be /${minPrefix} to /${maxPrefix}`, {
      reason: "INVALID_PREFIX",
    });
  }
  const address = parseIpv4(addressText, field);
  const size = 2 ** (32 - prefix);
  const network = Math.floor(address.value / size) * size;
  const broadcast = network + size - 1;
  if (address.value === network || address.value === broadcast) {
    throw new InvalidArgumentError(`${field} must be a host address, not the subnet's first or last`, {
      reason: "INVALID_ADDRESS",
    });
  }
  return { address, prefix, network, broadcast };
}

/** The subnet of a route destination such as `10.0.0.0/8`, `172.30.0.1` or `default`. */
export function routeRange(dst: string): [number, number] | undefined {
  if (dst === "default") return undefined; // the default route overlaps everything; it is not a conflict
  const [addressText, prefixText = "32"] = dst.split("/");
  if (addressText === undefined || !DOTTED.test(addressText)) return undefined;
  const prefix = Number(prefixText);
  const value = parseIpv4(addressText, "route").value;
  const size = 2 ** (32 - prefix);
  const network = Math.floor(value / size) * size;
  return [network, network + size - 1];
}

export function contains(cidr: Ipv4Cidr, value: number): boolean {
  return value > cidr.network && value < cidr.broadcast;
}
