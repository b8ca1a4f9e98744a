/**
 * What one pull may take from the host, whatever its layers hold. A layer is
 * a stranger's input: a few hundred KB of zstd can claim terabytes of files
 * or millions of entries. Memory is bounded by streaming with backpressure
 * (see extract.ts); these bound the work, the disk and the recorded metadata.
 */
import { ResourceExhaustedError } from "@banger/common/errors";

const MIB = 1024 ** 2;
const GIB = 1024 ** 3;

export interface BuildLimits {
  /** Uncompressed tar bytes of all the image's layers together (`--max-image-mib`). */
  readonly maxImageBytes: number;
  /** Entries of all the image's layers together: files, directories, links, devices, whiteouts (`--max-image-entries`). */
  readonly maxImageEntries: number;
  /** Largest single file; a header claiming more is a hostile layer. */
  readonly maxFileBytes: number;
  /** Bytes the file system holding the unpacked tree keeps free (`--min-free-mib`). */
  readonly minFreeBytes: number;
}

/**
 * 32 GiB and a million entries: eight times a 4 GiB distribution image, above
 * the largest common images (CUDA development images, ~10-20 GiB, well under
 * a million files), while a bomb costs at most a minute of CPU and nothing on
 * disk (zeros are written as holes). The metadata kept per entry (~200 bytes
 * and its path, paths at most 256 bytes an entry on average) makes a million
 * entries ~300 MiB of puller memory with real paths, under 500 MiB at worst. 1 GiB free is
 * what the scratch directory (tmpfs) already keeps for the host.
 */
export const DEFAULT_BUILD_LIMITS: BuildLimits = {
  maxImageBytes: 32 * GIB,
  maxImageEntries: 1_000_000,
  maxFileBytes: 16 * GIB,
  minFreeBytes: GIB,
};

/** What the layers of one image have used so far (carried from layer to layer by the builder). */
export interface BuildUsage {
  bytes: number;
  entries: number;
  /** Bytes of the entries' paths, which the recorded metadata keeps. */
  nameBytes?: number;
}

/**
 * Path bytes an image's entries may hold on average: real paths are far
 * shorter, and it keeps the recorded metadata within about
 * (~200 + 256 bytes) × --max-image-entries even when every name is 4 KiB.
 */
export const NAME_BYTES_PER_ENTRY = 256;

const mib = (bytes: number) => `${Math.floor(bytes / MIB)} MiB`;

export function imageTooLarge(limits: BuildLimits): ResourceExhaustedError {
  return new ResourceExhaustedError(
    `the image's layers unpack to more than ${limits.maxImageBytes} bytes (${mib(limits.maxImageBytes)}), the limit of the image puller (--max-image-mib)`,
    { reason: "IMAGE_TOO_LARGE" },
  );
}

export function tooManyEntries(limits: BuildLimits): ResourceExhaustedError {
  return new ResourceExhaustedError(
    `the image's layers hold more than ${limits.maxImageEntries} entries, the limit of the image puller (--max-image-entries)`,
    { reason: "IMAGE_TOO_MANY_ENTRIES" },
  );
}

export function namesTooLong(limits: BuildLimits): ResourceExhaustedError {
  const bytes = limits.maxImageEntries * NAME_BYTES_PER_ENTRY;
  return new ResourceExhaustedError(
    `the image's entries have paths of more than ${bytes} bytes together (${NAME_BYTES_PER_ENTRY} bytes an entry × --max-image-entries ${limits.maxImageEntries})`,
    { reason: "IMAGE_TOO_MANY_ENTRIES" },
  );
}

export function spaceLow(dir: string, freeBytes: number, limits: BuildLimits): ResourceExhaustedError {
  return new ResourceExhaustedError(
    `the file system of ${dir} has ${mib(freeBytes)} free, less than the ${mib(limits.minFreeBytes)} the image puller keeps free (--min-free-mib): free some space or pull a smaller image`,
    { reason: "SCRATCH_SPACE_LOW" },
  );
}
