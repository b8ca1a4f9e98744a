/**
 * A VM's root disk. `clone`: the owner's sparse copy of the image's root
 * filesystem (`root.ext4`). `dm-snapshot`: a device-mapper snapshot of the
 * image's file (a read-only loop) with a copy-on-write file (`root.cow`, a
 * read-write loop), attached while the VM runs.
 */
import { chmod, open, stat } from "node:fs/promises";
import { copySparse } from "@banger/common";
import type { ImageRecord, VmRecord } from "../../store/index.js";
import type { CallScope } from "../call-scope.js";
import type { VmContext } from "./context.js";
import type { RootAttachment } from "./model.js";

/** Room in the COW store beyond the image's size, for the snapshot's own metadata. */
const COW_SLACK_BYTES = 64 * 1024 * 1024;

/** Stage root-disk of a create: the clone, or the COW file and the snapshot over the image. */
export async function makeRootDisk(
  ctx: VmContext,
  vm: VmRecord,
  image: ImageRecord,
  signal: AbortSignal,
  scope: CallScope,
): Promise<RootAttachment> {
  const paths = ctx.state.vm(vm.id);
  const imageRootfs = ctx.state.image(image.name).rootfs;
  if (vm.rootDiskStrategy === "dm-snapshot") {
    // A sparse copy-on-write store as large as the image (plus room for the snapshot's metadata).
    const cow = await open(paths.rootCow, "wx", 0o660);
    await cow.truncate(Math.ceil(((await stat(imageRootfs)).size * 1.1) / 4096) * 4096 + COW_SLACK_BYTES);
    await cow.chmod(0o660); // the helper attaches it read-write through the group
    await cow.close();
    return attachRoot(ctx, vm, scope);
  }
  // The owner's file: the helper opens it read-write through the group (the units give it no
  // CAP_DAC_OVERRIDE) and hands it to e2fsck and debugfs, which run as the owner.
  await copySparse(imageRootfs, paths.rootDisk, { signal });
  await chmod(paths.rootDisk, 0o660);
  return { device: paths.rootDisk, loops: [] };
}

/** A dm-snapshot VM's root device: the image's loop (read-only), the COW file's loop, the snapshot over both. */
export async function attachRoot(ctx: VmContext, vm: VmRecord, scope: CallScope): Promise<RootAttachment> {
  const files = [ctx.state.image(vm.imageName).rootfs, ctx.state.vm(vm.id).rootCow];
  const loops: { device: string; backingFile: string }[] = [];
  try {
    for (const [index, backingFile] of files.entries()) {
      loops.push({ device: await ctx.host.attachLoop(backingFile, index === 0, scope), backingFile });
    }
    const [origin, cow] = loops as [(typeof loops)[0], (typeof loops)[0]];
    return { device: await ctx.host.createSnapshot(vm.id, origin.device, cow.device, scope), loops };
  } catch (error) {
    await detachRoot(ctx, vm, { device: "", loops }, { signal: AbortSignal.timeout(30_000) }).catch(
      (undoError: unknown) =>
        ctx.logger.error({ vm: vm.name, err: undoError }, "could not release a half-made root device"),
    );
    throw error;
  }
}

/** Releases a root device: the snapshot (dm-snapshot VMs), then its loop devices. */
export async function detachRoot(ctx: VmContext, vm: VmRecord, root: RootAttachment, scope: CallScope): Promise<void> {
  if (vm.rootDiskStrategy === "dm-snapshot") await ctx.host.removeSnapshot(vm.id, scope);
  for (const loop of [...root.loops].reverse()) await ctx.host.detachLoop(loop.device, loop.backingFile, scope);
}
