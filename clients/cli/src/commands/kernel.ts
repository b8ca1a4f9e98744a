import { resolve } from "node:path";
import { KernelService } from "@banger/gen/banger/v1/kernel_pb.js";
import { KernelSchema, type Kernel } from "@banger/gen/banger/v1/resources_pb.js";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Command } from "commander";
import type { GlobalOptions } from "../context.js";
import { printJsonList } from "../render/json.js";
import { mib } from "../render/size.js";
import { renderTable } from "../render/table.js";
import { registerDelete, registerListShow, type ListShowSpec } from "./resource.js";
import { announceAndWatch, detachOption, withOrchestrator } from "./op.js";

/** `kernel import`, `initramfs`, `list`, `show`, `delete`, `set-default`. */
export function registerKernelCommands(kernel: Command, globals: () => GlobalOptions): void {
  registerKernelSources(kernel, globals);
  registerListShow(kernel, globals, KERNEL_LISTING);
  kernel
    .command("set-default")
    .argument("<name>", "kernel name")
    .description("make a kernel the default (the previous default stops being it)")
    .action(async (name: string) => {
      await withOrchestrator(globals(), async (o) => {
        await o.client(KernelService).setDefaultKernel({ name }, o.callOptions());
        process.stderr.write(`${name} is now the default kernel\n`);
      });
    });
  registerDelete(kernel, globals, {
    noun: "kernel",
    description: "delete a kernel (refused while an image or VM uses it; deleting a missing kernel succeeds)",
    remove: async (o, name) => (await o.client(KernelService).deleteKernel({ name }, o.callOptions())).existed,
  });
}

/** `kernel import` and `kernel initramfs`: a kernel brought in, and its initrd built. */
function registerKernelSources(kernel: Command, globals: () => GlobalOptions): void {
  kernel
    .command("import")
    .argument("<name>", "name to import it under, e.g. debian-6.1")
    .argument(
      "<dir>",
      "directory holding metadata.json (kernel, initrd, modules, version), or boot/vmlinu[xz]-*, boot/initrd.img-* and lib/modules/<version> as a kernel package unpacks them",
    )
    .description(
      "copy a kernel, its initrd and modules into the catalog; shows each stage, exits 1 if the import fails",
    )
    .option("--default", "make it the default kernel (the first kernel imported always becomes it)")
    .option("--replace", "replace a kernel of that name (refused while an image or VM uses it)")
    .option("--no-wait", "print the operation id and return at once")
    .addOption(detachOption())
    .option("--json", "print the kernel as JSON when done")
    .action(
      async (
        name: string,
        dir: string,
        opts: { default?: boolean; replace?: boolean; wait: boolean; json?: boolean },
      ) => {
        await withOrchestrator(globals(), async (o) => {
          const sourceDir = resolve(dir);
          const { operation } = await o
            .client(KernelService)
            .importKernel(
              { name, sourceDir, setDefault: opts.default === true, replace: opts.replace === true },
              o.callOptions(),
            );
          if (!operation) return;
          const what = `importing ${sourceDir} as ${operation.target}`;
          const done = await announceAndWatch(o, operation, what, opts.wait);
          if (done?.result.case === "kernel") printKernels([done.result.value], opts.json === true);
        });
      },
    );
  kernel
    .command("initramfs")
    .argument("<name>", "kernel name")
    .description(
      "build banger's initramfs from a kernel's modules (virtio, ext4, vsock; the guest's network, work disk and init); it becomes the kernel's initrd. Needs a static /bin/busybox (busybox-static); shows each stage, exits 1 if the build fails",
    )
    .option("--no-wait", "print the operation id and return at once")
    .addOption(detachOption())
    .option("--json", "print the kernel as JSON when done")
    .action(async (name: string, opts: { wait: boolean; json?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const { operation } = await o.client(KernelService).buildInitramfs({ name }, o.callOptions());
        if (!operation) return;
        const done = await announceAndWatch(o, operation, `building the initramfs of ${operation.target}`, opts.wait);
        if (done?.result.case === "kernel") printKernels([done.result.value], opts.json === true);
      });
    });
}

/** The lines of `kernel show`. */
function describeKernel(found: Kernel): string[] {
  return [
    `name:      ${found.name}${found.isDefault ? " (default)" : ""}`,
    `version:   ${found.version || "unknown"}`,
    `kernel:    ${mib(found.kernelBytes)}, ${found.uncompressed ? "vmlinux (uncompressed)" : "vmlinuz (compressed)"}`,
    `digest:    ${found.kernelSha256}`,
    `initrd:    ${found.initrdBytes > 0n ? mib(found.initrdBytes) : "none"}`,
    `modules:   ${found.hasModules ? "yes" : "no"}`,
    `imported:  ${found.createTime ? timestampDate(found.createTime).toISOString() : ""}`,
    `used by:   ${found.usedBy.length > 0 ? found.usedBy.join(", ") : "nothing"}`,
  ];
}

function printKernels(kernels: readonly Kernel[], json: boolean): void {
  if (json) return printJsonList(KernelSchema, kernels);
  const rows = kernels.map((k) => [
    `${k.name}${k.isDefault ? " *" : ""}`,
    k.version,
    `${k.uncompressed ? "vmlinux" : "vmlinuz"} ${mib(k.kernelBytes)}`,
    k.initrdBytes > 0n ? mib(k.initrdBytes) : "-",
    k.hasModules ? "yes" : "no",
    k.usedBy.join(","),
  ]);
  process.stdout.write(renderTable(["NAME", "VERSION", "KERNEL", "INITRD", "MODULES", "USED BY"], rows));
}

/** `kernel list` and `kernel show`. */
const KERNEL_LISTING: ListShowSpec<Kernel> = {
  listDescription: "imported kernels; * marks the default",
  showDescription: "one kernel: version, digest, sizes, initrd, modules, who uses it",
  nameArgument: "kernel name",
  fetchAll: async (o) => (await o.client(KernelService).listKernels({}, o.callOptions())).kernels,
  fetchOne: async (o, name) => (await o.client(KernelService).getKernel({ name }, o.callOptions())).kernel,
  print: printKernels,
  describe: describeKernel,
};
