/** A throwaway network namespace for tests that change links and nftables for real. */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";

export const IS_ROOT = process.getuid?.() === 0;

export interface NetNs {
  readonly name: string;
  /** Runs a command inside the namespace and returns its stdout. */
  exec(argv: readonly string[]): string;
  links(): {
    ifname: string;
    ifalias?: string;
    master?: string;
    linkinfo?: { info_kind?: string; info_data?: { user?: number } };
  }[];
  ruleset(): string;
  remove(): void;
}

export function createNetNs(): NetNs {
  const name = `bgrt-${randomBytes(4).toString("hex")}`;
  execFileSync("ip", ["netns", "add", name]);
  const exec = (argv: readonly string[]) => execFileSync("ip", ["netns", "exec", name, ...argv], { encoding: "utf8" });
  exec(["ip", "link", "set", "lo", "up"]);
  return {
    name,
    exec,
    links: () => JSON.parse(exec(["ip", "-j", "-d", "link", "show"])) as ReturnType<NetNs["links"]>,
    ruleset: () => exec(["nft", "list", "ruleset"]),
    remove: () => execFileSync("ip", ["netns", "del", name]),
  };
}
