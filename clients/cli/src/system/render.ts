/**
 * Renders the unit templates of `deploy/systemd/*.in` for one owner and one
 * code location. Templates hold `@NAME@` placeholders; a value that systemd
 * would read differently than meant (whitespace, quotes, `%` specifiers) is
 * refused instead of escaped.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { SYSTEM_PATHS, UNIT_FILES } from "./layout.js";

/** What the units are rendered for. */
export interface UnitValues {
  readonly version: string;
  /** The checkout (or unpacked bundle) the services run from: `<codeDir>/services/*\/dist/bundle/main.js`. */
  readonly codeDir: string;
  /** The node binary. */
  readonly node: string;
  readonly owner: { readonly user: string; readonly uid: number; readonly gid: number; readonly home: string };
  readonly firecracker: string;
  /** IPv4 address bangerd-dns.socket binds port 53 on (the bridge's). */
  readonly dnsAddress: string;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** What the helper's RootDirectory shows of the OS (`-`: only where it exists). */
const HELPER_OS_PATHS = [
  "/usr",
  "/etc",
  "-/bin",
  "-/sbin",
  "-/lib",
  "-/lib64",
  // resolvectl (ConfigureResolver) over D-Bus, and the probe for systemd-resolved.
  "-/run/dbus/system_bus_socket",
  "-/run/systemd/resolve",
];

/** Directories systemd's ProtectHome= hides. */
const HOME_TREES = ["/home", "/root", "/run/user"];

const SAFE_PATH = /^\/[A-Za-z0-9._/+-]*$/;
const SAFE_USER = /^[a-z_][a-z0-9_-]*[$]?$/;

export class UnitValueError extends Error {
  override readonly name = "UnitValueError";
}

function isUnder(path: string, dir: string): boolean {
  return path === dir || path.startsWith(`${dir}/`);
}

function underHomeTree(path: string): boolean {
  return HOME_TREES.some((tree) => isUnder(path, tree));
}

/** Where the templates are in a checkout. */
export function templateDir(codeDir: string): string {
  return join(codeDir, "deploy", "systemd");
}

/** Each unit file's name and rendered text; the templates are read from `templatesFrom`'s deploy/systemd/. */
export function renderUnits(values: UnitValues, templatesFrom = values.codeDir): Map<string, string> {
  for (const [what, path] of [
    ["the code directory", values.codeDir],
    ["node", values.node],
    ["the owner's home", values.owner.home],
    ["firecracker", values.firecracker],
  ] as const) {
    if (!SAFE_PATH.test(path) || path.includes("//") || path.includes("/../") || path.endsWith("/..")) {
      throw new UnitValueError(
        `${what} is ${JSON.stringify(path)}: unit files need an absolute path of letters, digits and . _ / + - only`,
      );
    }
  }
  if (!IPV4.test(values.dnsAddress)) {
    throw new UnitValueError(`the DNS address ${JSON.stringify(values.dnsAddress)} is not an IPv4 address`);
  }
  if (!SAFE_USER.test(values.owner.user)) {
    throw new UnitValueError(`the owner's user name ${JSON.stringify(values.owner.user)} cannot go into a unit file`);
  }

  // Code outside the owner's home but inside a hidden tree (/root/banger, a node under
  // another user's ~/.nvm) is bound back in read-only.
  const codePaths = [values.codeDir, values.node];
  const hiddenCode = (extra: readonly string[]) => [...codePaths, ...extra].filter(underHomeTree);
  const protectHome = (paths: readonly string[]) =>
    paths.length === 0 ? "ProtectHome=yes" : `ProtectHome=tmpfs\nBindReadOnlyPaths=${paths.join(" ")}`;
  const home = values.owner.home;
  const orchestratorBinds = hiddenCode([]).filter((p) => !isUnder(p, home));
  // The helper (root) and the VMMs it starts see only what they use: the OS read-only (/usr, /etc and
  // the merged-usr links), the resolver's sockets, the code, and banger's state and runtime directories.
  const helperOwnBinds = [values.codeDir, values.node, values.firecracker]
    .filter((path) => !underHomeTree(path) && !HELPER_OS_PATHS.some((os) => isUnder(path, os.replace(/^-/, ""))))
    .map((path) => (path === values.firecracker ? `-${path}` : path)); // installed later, perhaps
  const fileAccess: Record<string, string> = {
    "bangerd.service": [
      "ProtectHome=tmpfs",
      `BindReadOnlyPaths=${[home, ...orchestratorBinds].join(" ")}`,
      `BindPaths=${join(home, ".config", "banger")}`,
    ].join("\n"),
    "banger-privileged.service": [
      `RootDirectory=${SYSTEM_PATHS.helperRoot}`,
      `BindReadOnlyPaths=${[...HELPER_OS_PATHS, ...helperOwnBinds].join(" ")}`,
      `BindPaths=${SYSTEM_PATHS.stateDir} ${SYSTEM_PATHS.runtime.runtimeDir}`,
      protectHome(hiddenCode([values.firecracker])),
    ].join("\n"),
    "banger-image-puller.service": protectHome(hiddenCode([])),
  };

  const units = new Map<string, string>();
  for (const unit of UNIT_FILES) {
    const template = readFileSync(join(templateDir(templatesFrom), `${unit}.in`), "utf8");
    const substitutions: Record<string, string> = {
      VERSION: values.version,
      CODE_DIR: values.codeDir,
      NODE: values.node,
      OWNER_USER: values.owner.user,
      OWNER_UID: String(values.owner.uid),
      OWNER_GID: String(values.owner.gid),
      FIRECRACKER: values.firecracker,
      DNS_ADDRESS: values.dnsAddress,
      FILE_ACCESS: fileAccess[unit] ?? "",
    };
    const text = template.replace(/@([A-Z_]+)@/g, (placeholder, name: string) => {
      const value = substitutions[name];
      if (value === undefined) throw new UnitValueError(`${unit}.in: unknown placeholder ${placeholder}`);
      return value;
    });
    units.set(unit, text);
  }
  return units;
}

/** How a service's unit starts node: the options before the script, and the environment it sets. */
export interface NodeLaunch {
  /** node's own options on the ExecStart= line (`--jitless`, `--expose-gc`). */
  readonly nodeArgs: readonly string[];
  /** The unit's `Environment=NAME=value` lines. */
  readonly env: Readonly<Record<string, string>>;
}

/**
 * Reads `unit`'s template in `templatesFrom`'s deploy/systemd/ for how it starts node, so that
 * `banger dev up` starts each service as its installed unit does (the benches read the same lines).
 */
export function unitNodeLaunch(unit: string, templatesFrom: string): NodeLaunch {
  const template = readFileSync(join(templateDir(templatesFrom), `${unit}.in`), "utf8");
  const exec = /^ExecStart=@NODE@ (.*?)\S*\/main\.js /m.exec(template);
  if (exec === null) throw new UnitValueError(`${unit}.in: no ExecStart=@NODE@ … main.js`);
  const env: Record<string, string> = {};
  for (const [, name = "", value = ""] of template.matchAll(/^Environment=([A-Za-z_][A-Za-z0-9_]*)=(\S*)$/gm)) {
    env[name] = value;
  }
  return { nodeArgs: (exec[1] ?? "").split(" ").filter((a) => a !== ""), env };
}
