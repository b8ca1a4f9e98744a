/**
 * What one layer adds to the image's use of the limits, counted as it grows:
 * its uncompressed bytes (hashed on the way: the diff_id), its entries and
 * their names, the bytes written to the tree, and the free space left on the
 * tree's file system, looked at again every so many bytes or entries.
 */
import { createHash } from "node:crypto";
import { statfsSync } from "node:fs";
import { Transform } from "node:stream";
import {
  imageTooLarge,
  namesTooLong,
  NAME_BYTES_PER_ENTRY,
  spaceLow,
  tooManyEntries,
  type BuildLimits,
  type BuildUsage,
} from "./limits.js";
import { hostile } from "./tree.js";

/** The free space of the tree's file system is looked at again after this many bytes written… */
const SPACE_CHECK_BYTES = 64 * 1024 * 1024;
/** …or this many entries made. */
const SPACE_CHECK_ENTRIES = 4096;

export class LayerMeter {
  /** Entries of this layer. */
  entries = 0;
  private readonly hash = createHash("sha256");
  private writtenSinceCheck = 0;
  private entriesSinceCheck = 0;

  /** Looks at the free space once before the layer starts. */
  constructor(
    private readonly treeDir: string,
    private readonly limits: BuildLimits,
    /** What the image's earlier layers used; this layer adds to it. */
    private readonly usage: BuildUsage,
  ) {
    this.checkSpace();
  }

  /** The uncompressed tar flows through this: counted against the image's bytes and hashed. */
  counting(): Transform {
    const { usage, limits, hash } = this;
    return new Transform({
      transform(chunk: Buffer, _enc, done) {
        usage.bytes += chunk.length;
        if (usage.bytes > limits.maxImageBytes) {
          done(imageTooLarge(limits));
          return;
        }
        hash.update(chunk);
        done(null, chunk);
      },
    });
  }

  /** The sha256 of the uncompressed tar, once it has all flowed through `counting()`. */
  diffId(): string {
    return `sha256:${this.hash.digest("hex")}`;
  }

  /** One more entry, before its name is looked at. */
  countEntry(): void {
    this.entries++;
    this.usage.entries++;
    if (this.usage.entries > this.limits.maxImageEntries) throw tooManyEntries(this.limits);
    if (++this.entriesSinceCheck >= SPACE_CHECK_ENTRIES) this.checkSpace();
  }

  /** The entry's tree path, which the recorded metadata keeps. */
  countName(path: string): void {
    this.usage.nameBytes = (this.usage.nameBytes ?? 0) + path.length;
    if (this.usage.nameBytes > this.limits.maxImageEntries * NAME_BYTES_PER_ENTRY) throw namesTooLong(this.limits);
  }

  /** A file entry claiming `size` bytes: refused before any of it is written when it cannot fit. */
  claimFile(size: number, entry: string): void {
    if (size > this.limits.maxFileBytes) {
      throw hostile(entry, `claims ${size} bytes, more than the ${this.limits.maxFileBytes} allowed`);
    }
    if (this.usage.bytes + size > this.limits.maxImageBytes) throw imageTooLarge(this.limits); // before writing any of it
  }

  /** Bytes written to the tree. */
  readonly written = (bytes: number): void => {
    this.writtenSinceCheck += bytes;
    if (this.writtenSinceCheck >= SPACE_CHECK_BYTES) this.checkSpace();
  };

  private checkSpace(): void {
    const stats = statfsSync(this.treeDir);
    const free = stats.bavail * stats.bsize;
    if (free < this.limits.minFreeBytes) throw spaceLow(this.treeDir, free, this.limits);
    this.writtenSinceCheck = 0;
    this.entriesSinceCheck = 0;
  }
}
