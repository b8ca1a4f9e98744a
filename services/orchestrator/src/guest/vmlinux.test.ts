import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { FailedPreconditionError } from "@banger/common";
import { hasTool, requireTools } from "@banger/common/testing";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { fakeBzImage, fakeElf } from "../../test-support/initramfs.js";
import { bzImagePayload, elfEnd, extractVmlinux } from "./vmlinux.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "banger-vmlinux-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** vmlinux.bin as the kernel build compresses it: the ELF, then its relocations. */
const ELF = fakeElf({ body: 4096 });
const ELF_WITH_RELOCS = Buffer.concat([ELF, Buffer.from("relocations".repeat(20))]);

async function bzImageFile(compressed: Uint8Array): Promise<string> {
  const path = join(dir, "vmlinuz-6.1.0-test");
  await writeFile(path, fakeBzImage(compressed, ELF_WITH_RELOCS.length));
  return path;
}

// The distribution kernel the boot proof uses, when the host has one installed.
const hostKernel = existsSync("/boot") ? readdirSync("/boot").find((f) => /^vmlinuz-.*amd64$/.test(f)) : undefined;
// One line for the tests below that need the host's: each skips on its own.
requireTools("kernels compressed with the host's tools", [
  "xz",
  "zstd",
  { what: "a Debian kernel in /boot (linux-image-amd64)", present: hostKernel !== undefined },
]);

describe("vmlinux from a bzImage", () => {
  it("finds a gzip payload through the boot header and cuts the ELF where it ends (relocations dropped)", async () => {
    const result = await extractVmlinux(await bzImageFile(gzipSync(ELF_WITH_RELOCS)));
    expect(result).toEqual({ vmlinux: ELF, compression: "gzip" });
  });

  it.skipIf(!hasTool("xz"))("decompresses an xz payload (Debian's) with the host's xz", async () => {
    const xz = execFileSync("xz", ["-c", "--check=crc32"], { input: ELF_WITH_RELOCS });
    const result = await extractVmlinux(await bzImageFile(xz));
    expect(result).toEqual({ vmlinux: ELF, compression: "xz" });
  });

  it.skipIf(!hasTool("zstd"))("decompresses a zstd payload (Ubuntu's) with the host's zstd", async () => {
    const zstd = execFileSync("zstd", ["-c", "-q"], { input: ELF_WITH_RELOCS });
    const result = await extractVmlinux(await bzImageFile(zstd));
    expect(result).toEqual({ vmlinux: ELF, compression: "zstd" });
  });

  it("says why when the file is not an extractable bzImage", async () => {
    const cases: [string, Buffer, RegExp][] = [
      ["an ELF already", ELF, /no x86 boot header/],
      ["too old a boot protocol", Buffer.from(fakeBzImage(gzipSync(ELF), ELF.length)).fill(0, 0x206, 0x208), /older/],
      ["an unknown compression", fakeBzImage(Buffer.from("not compressed at all"), 10), /no compression banger knows/],
    ];
    for (const [what, image, reason] of cases) {
      const path = join(dir, what.replace(/ /g, "-"));
      await writeFile(path, image);
      const result = await extractVmlinux(path);
      expect(result, what).toMatchObject({ reason: expect.stringMatching(reason) as unknown });
    }
    // A payload that decompresses to something else than an ELF.
    const notElf = await bzImageFile(gzipSync(Buffer.from("text, not a kernel")));
    expect(await extractVmlinux(notElf)).toMatchObject({ reason: expect.stringMatching(/not an ELF64/) as unknown });
  });

  it("reports a missing decompressor as HOST_TOOL_MISSING naming the package", async () => {
    const path = await bzImageFile(Buffer.concat([Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), ELF]));
    const missing = () =>
      Promise.reject(new FailedPreconditionError("xz is not installed", { reason: "HOST_TOOL_MISSING" }));
    const error = await extractVmlinux(path, { run: missing }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FailedPreconditionError);
    expect(error).toMatchObject({
      reason: "HOST_TOOL_MISSING",
      message: expect.stringContaining("xz-utils") as unknown,
    });
  });

  it("reads the payload fields of the header", () => {
    const payload = gzipSync(ELF);
    const found = bzImagePayload(fakeBzImage(payload, ELF.length));
    expect(found).toEqual({ bytes: payload, compression: "gzip" });
    expect(elfEnd(ELF_WITH_RELOCS)).toBe(ELF.length);
    expect(elfEnd(Buffer.from("nope"))).toBeUndefined();
  });

  it.skipIf(hostKernel === undefined || !hasTool("xz"))(
    "extracts the vmlinux of the host's Debian kernel package",
    async () => {
      const result = await extractVmlinux(join("/boot", hostKernel ?? ""));
      if ("reason" in result) throw new Error(result.reason);
      expect(result.vmlinux.subarray(0, 4)).toEqual(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
      expect(elfEnd(result.vmlinux)).toBe(result.vmlinux.length);
    },
  );
});
