/**
 * Where bangerd's bridge will have its address, read from the owner's config.toml the way bangerd reads
 * it (network.address, else its default): `system install` and `dev up` bind bangerd's port-53 sockets
 * there before the bridge exists.
 */
import { parse as parseToml } from "smol-toml";

/** bangerd's default network.address (172.30.0.1/24), without the prefix. */
export const DEFAULT_BRIDGE_ADDRESS = "172.30.0.1";

/**
 * The bridge's address in `text` (the content of config file `file`; undefined: there is none), and
 * where it came from. Throws an Error saying what is wrong with the file.
 */
export function bridgeAddressOf(text: string | undefined, file: string): { address: string; from: string } {
  const byDefault = { address: DEFAULT_BRIDGE_ADDRESS, from: "bangerd's default network.address" };
  if (text === undefined) return byDefault;
  let network: unknown;
  try {
    network = (parseToml(text) as { network?: unknown }).network;
  } catch (error) {
    throw new Error(`${file} is not valid TOML (${(error as Error).message.split("\n")[0] ?? ""})`);
  }
  const address = (network as { address?: unknown } | undefined)?.address;
  if (address === undefined) return byDefault;
  if (typeof address !== "string" || !/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(address)) {
    throw new Error(`network.address in ${file} is not an IPv4 address with a prefix`);
  }
  return { address: address.slice(0, address.indexOf("/")), from: `network.address in ${file}` };
}
