/** The catalog checks: the default image and kernel a plain `vm create` would use, and the guest kit's tools. */
import type { DoctorCheck } from "../capabilities.js";
import { CATALOG, TINY_IMAGE, isKnownImageName } from "../images.js";
import type { DoctorDeps } from "../doctor.js";
import { check, type Settled } from "./settle.js";

/** What `banger kernel initramfs` makes banger's guest kit from (guest/kit.ts): programs, and the tools that bundle them. */
export const KIT_TOOLS = [
  { tool: "qemu-ga", pkg: "qemu-guest-agent" },
  { tool: "dropbear", pkg: "dropbear-bin" },
  { tool: "dropbearkey", pkg: "dropbear-bin" },
  { tool: "patchelf", pkg: "patchelf" },
  { tool: "ldd", pkg: "libc-bin" },
] as const;

/** The kernel `vm create` without --kernel would boot for the default image, as the lifecycle resolves it. */
export async function resolveDefaultKernel(
  deps: DoctorDeps,
  imageName: string,
): Promise<{ name: string; source: string; exists: boolean; hasKit: boolean | undefined } | undefined> {
  const local = await deps.catalog.image(imageName);
  const catalogKernel = CATALOG.find((entry) => entry.name === imageName)?.defaultKernel ?? "";
  let name: string | undefined;
  let source: string;
  if (local?.defaultKernel) [name, source] = [local.defaultKernel, `image ${imageName}'s kernel`];
  else if (catalogKernel) [name, source] = [catalogKernel, `the catalog's kernel for ${imageName}`];
  else if (deps.config.defaultKernel) [name, source] = [deps.config.defaultKernel, "default_kernel in config"];
  else [name, source] = [await deps.catalog.defaultKernel(), "the host default kernel"];
  if (name === undefined) return undefined;
  const exists = await deps.catalog.kernelExists(name);
  return { name, source, exists, hasKit: exists ? await deps.catalog.kernelHasKit?.(name) : undefined };
}

export function defaultImageCheck(
  found: Settled<{ readonly defaultKernel: string | null } | undefined>,
  name: string,
  configPath: string,
): DoctorCheck {
  if (!found.ok) return check("default-image", "warn", `could not look up image ${name}: ${found.error.message}`);
  if (found.value) return check("default-image", "ok", `${name} is local`);
  const entry = CATALOG.find((e) => e.name === name);
  if (entry) {
    return check(
      "default-image",
      "ok",
      `${name} is not local yet: pulled from ${entry.reference} on first use (the built-in ${TINY_IMAGE}, built here, ` +
        "when that registry is unreachable and the create names no image)",
    );
  }
  if (isKnownImageName(name)) return check("default-image", "ok", `${name} is built in: built here on first use`);
  return check(
    "default-image",
    "fail",
    `${name} (default_image) is neither local nor in the catalog (${CATALOG.map((e) => e.name).join(", ")})`,
    `banger image pull REFERENCE --name ${name}, or set default_image in ${configPath}`,
  );
}

export function defaultKernelCheck(
  found: Settled<{ name: string; source: string; exists: boolean } | undefined>,
  host: { readonly version: string; readonly kernel: string } | undefined,
): DoctorCheck {
  if (!found.ok) return check("default-kernel", "warn", `could not look up the default kernel: ${found.error.message}`);
  const kernel = found.value;
  const importHint = (name: string) =>
    `banger kernel import ${name} DIR (a directory with vmlinux and initrd, or an unpacked distribution kernel package)`;
  if (!kernel && host) {
    return check(
      "default-kernel",
      "ok",
      `none imported yet: the first VM imports this host's kernel ${host.version} (${host.kernel}) and builds its initramfs`,
    );
  }
  if (!kernel) {
    return check(
      "default-kernel",
      "fail",
      "no kernel imported, and none installed on this host that banger can use: VMs have nothing to boot",
      `${importHint("NAME")}, or install one (Debian, Ubuntu: apt install linux-image-amd64)`,
    );
  }
  if (!kernel.exists) {
    return check(
      "default-kernel",
      "fail",
      `kernel ${kernel.name} (${kernel.source}) does not exist`,
      importHint(kernel.name),
    );
  }
  return check("default-kernel", "ok", `${kernel.name} (${kernel.source})`);
}

/**
 * The host side of banger's guest kit: the programs and tools `banger kernel initramfs` bundles it from, and
 * whether the default kernel's initrd has it (without it, guests have no agent, and images without an SSH
 * server cannot be reached).
 */
export function guestKitCheck(
  toolPaths: ReadonlyMap<string, string | undefined>,
  found: Settled<{ name: string; exists: boolean; hasKit?: boolean | undefined } | undefined>,
): DoctorCheck {
  const missing = KIT_TOOLS.filter(({ tool }) => toolPaths.get(tool) === undefined);
  if (missing.length > 0) {
    return check(
      "guest-kit",
      "fail",
      `${missing.map((m) => m.tool).join(", ")} not found: 'banger kernel initramfs' cannot build the guest kit (agent, SSH server)`,
      `sudo apt-get install ${[...new Set(missing.map((m) => m.pkg))].join(" ")}`,
    );
  }
  const kernel = found.ok ? found.value : undefined;
  if (kernel?.exists && kernel.hasKit === false) {
    return check(
      "guest-kit",
      "warn",
      `kernel ${kernel.name}'s initrd has no guest kit: its guests have no agent (no health, no graceful stop through it) and images without an SSH server cannot be reached`,
      `banger kernel initramfs ${kernel.name}`,
    );
  }
  return check(
    "guest-kit",
    "ok",
    `qemu-ga and dropbear at ${toolPaths.get("qemu-ga")} and ${toolPaths.get("dropbear")}${kernel?.hasKit ? `; kernel ${kernel.name}'s initrd has the kit` : ""}`,
  );
}
