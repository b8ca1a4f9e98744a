import { resolve } from "node:path";
import { CatalogEntrySchema, ImageService } from "@banger/gen/banger/v1/image_pb.js";
import { ImageSchema, ImageSource, type Image } from "@banger/gen/banger/v1/resources_pb.js";
import type { Command } from "commander";
import type { GlobalOptions } from "../context.js";
import { UsageError } from "../errors.js";
import { printJsonList } from "../render/json.js";
import { mib } from "../render/size.js";
import { renderTable } from "../render/table.js";
import { registerDelete, registerListShow, type ListShowSpec } from "./resource.js";
import { announceAndWatch, detachOption, withOrchestrator } from "./op.js";

/** `image pull`, `register`, `promote`, `list`, `show`, `delete`. */
export function registerImageCommands(image: Command, globals: () => GlobalOptions): void {
  registerImageSources(image, globals);
  registerListShow(image, globals, IMAGE_LISTING);
  registerCatalog(image, globals);
  registerDelete(image, globals, {
    noun: "image",
    description: "delete an image (refused while a VM uses it; deleting a missing image succeeds)",
    remove: async (o, name) => (await o.client(ImageService).deleteImage({ name }, o.callOptions())).existed,
  });
}

interface PullOptions {
  name?: string;
  platform: string;
  replace?: boolean;
  minRootfs?: string;
  wait: boolean;
  json?: boolean;
}

function mibValue(value: string, flag: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n <= 0) {
    throw new UsageError(`${flag} must be a positive whole number of MiB, got ${value}`);
  }
  return n;
}

/** `image catalog`: the names `image pull` and `vm create --image` know, and whether each is local. */
function registerCatalog(image: Command, globals: () => GlobalOptions): void {
  image
    .command("catalog")
    .description(
      "the images banger knows by name (`image pull NAME`, `vm create --image NAME` pulls on first use) and " +
        "whether each is local",
    )
    .option("--json", "print JSON")
    .action(async (opts: { json?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const { entries } = await o.client(ImageService).listCatalog({}, o.callOptions());
        if (opts.json) return printJsonList(CatalogEntrySchema, entries);
        const rows = entries.map((e) => [e.name, e.local ? "yes" : "no", e.reference, e.description]);
        process.stdout.write(renderTable(["NAME", "LOCAL", "REFERENCE", "DESCRIPTION"], rows));
      });
    });
}

/** `image pull`, `image register` and `image promote`: the ways an image comes to be. */
function registerImageSources(image: Command, globals: () => GlobalOptions): void {
  image
    .command("pull")
    .argument(
      "<reference>",
      'an OCI reference ("debian:bookworm", "127.0.0.1:5000/x:tag"), a catalog name ("debian"), or tiny (built in: the host\'s busybox, built here with no download)',
    )
    .description("pull an image and build its ext4 root filesystem; shows each stage, exits 1 if the pull fails")
    .option("--name <name>", "publish it under this name (default: from the reference)")
    .option("--platform <os/arch>", "platform to pull from a multi-platform image", "")
    .option("--replace", "replace a local image of that name (refused while a VM uses it)")
    .option(
      "--min-rootfs <mib>",
      "root filesystem of at least this many MiB, 64-1048576 (default: image.min_rootfs_mib in the config); " +
        "never less than the content plus headroom",
    )
    .option("--no-wait", "print the operation id and return at once")
    .addOption(detachOption())
    .option("--json", "print the image as JSON when done")
    .action(async (reference: string, opts: PullOptions) => {
      const minRootfsMib = opts.minRootfs === undefined ? 0n : BigInt(mibValue(opts.minRootfs, "--min-rootfs"));
      await withOrchestrator(globals(), async (o) => {
        const { operation } = await o
          .client(ImageService)
          .pullImage(
            { reference, name: opts.name ?? "", platform: opts.platform, replace: opts.replace === true, minRootfsMib },
            o.callOptions(),
          );
        if (!operation) return;
        const done = await announceAndWatch(o, operation, `pulling ${reference} as ${operation.target}`, opts.wait);
        if (done?.result.case === "image") printImages([done.result.value], opts.json === true);
      });
    });
  image
    .command("register")
    .argument("<name>", "name to register it under")
    .description(
      "register an image from local ext4 files (copied into banger's catalog; sparse, reflinked where possible)",
    )
    .requiredOption("--rootfs <file>", "ext4 root filesystem image")
    .option(
      "--work-seed <file>",
      "ext4 image of /root that each VM's work disk starts from (default: an empty work disk)",
    )
    .option("--kernel <name>", "kernel VMs of this image boot by default (default: the host default)")
    .option("--json", "print the image as JSON")
    .action(async (name: string, opts: { rootfs: string; workSeed?: string; kernel?: string; json?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const { image: registered } = await o.client(ImageService).registerImage(
          {
            name,
            rootfsPath: resolve(opts.rootfs),
            workSeedPath: opts.workSeed === undefined ? "" : resolve(opts.workSeed),
            defaultKernel: opts.kernel ?? "",
          },
          o.callOptions(),
        );
        if (registered) printImages([registered], opts.json === true);
      });
    });
  image
    .command("promote")
    .argument("<vm>", "a stopped VM")
    .argument("<name>", "name of the new image")
    .description("turn a stopped VM's disks into a new image (its root disk, and its work disk as the work seed)")
    .option("--no-wait", "print the operation id and return at once")
    .addOption(detachOption())
    .option("--json", "print the image as JSON when done")
    .action(async (vm: string, name: string, opts: { wait: boolean; json?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const { operation } = await o.client(ImageService).promoteImage({ vm, name }, o.callOptions());
        if (!operation) return;
        const done = await announceAndWatch(o, operation, `promoting ${vm} to image ${name}`, opts.wait);
        if (done?.result.case === "image") printImages([done.result.value], opts.json === true);
      });
    });
}

/** The lines of `image show`. */
function describeImage(found: Image): string[] {
  const c = found.config;
  return [
    `name:       ${found.name}`,
    `reference:  ${found.reference}`,
    `digest:     ${found.manifestDigest}`,
    `platform:   ${found.platform}`,
    `rootfs:     ${mib(found.rootfsBytes)}`,
    `work seed:  ${found.workSeedBytes > 0n ? mib(found.workSeedBytes) : "none"}`,
    `kernel:     ${found.defaultKernel || "(host default)"}`,
    `source:     ${ImageSource[found.source].toLowerCase()}`,
    `used by:    ${found.usedBy.length > 0 ? found.usedBy.join(", ") : "no VM"}`,
    `entrypoint: ${JSON.stringify(c?.entrypoint ?? [])}  cmd: ${JSON.stringify(c?.cmd ?? [])}`,
  ];
}

function printImages(images: readonly Image[], json: boolean): void {
  if (json) return printJsonList(ImageSchema, images);
  const rows = images.map((i) => [i.name, i.reference, i.manifestDigest.slice(0, 19), mib(i.rootfsBytes)]);
  process.stdout.write(renderTable(["NAME", "REFERENCE", "DIGEST", "ROOTFS"], rows));
}

/** `image list` and `image show`. */
const IMAGE_LISTING: ListShowSpec<Image> = {
  listDescription: "local images",
  showDescription: "one image: reference, digest, sizes, config",
  nameArgument: "image name",
  fetchAll: async (o) => (await o.client(ImageService).listImages({}, o.callOptions())).images,
  fetchOne: async (o, name) => (await o.client(ImageService).getImage({ name }, o.callOptions())).image,
  print: printImages,
  describe: describeImage,
};
