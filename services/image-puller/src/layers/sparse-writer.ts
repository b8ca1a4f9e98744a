import { ftruncateSync, writeSync } from "node:fs";

const BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(BLOCK);
const isZero = (buf: Buffer, at: number, length: number) => buf.compare(ZERO_BLOCK, 0, length, at, at + length) === 0;

/**
 * Writes a file front to back, leaving a hole for every file-aligned block of
 * zeros (a 2 GiB file of zeros takes no space), runs of other blocks in one
 * write each; `end()` sets the size.
 */
export class SparseWriter {
  private readonly tail = Buffer.alloc(BLOCK);
  private tailBytes = 0;
  /** File offset of tail[0]: everything before it is written or a hole. */
  private offset = 0;
  /** The file's size so far: the end of its last write. */
  private size = 0;

  constructor(
    private readonly fd: number,
    private readonly onWritten: (bytes: number) => void,
  ) {}

  write(chunk: Buffer): void {
    let at = 0;
    if (this.tailBytes > 0) {
      at = chunk.copy(this.tail, this.tailBytes, 0, Math.min(chunk.length, BLOCK - this.tailBytes));
      this.tailBytes += at;
      if (this.tailBytes < BLOCK) return;
      this.blocks(this.tail, 0, BLOCK);
      this.tailBytes = 0;
    }
    const whole = at + Math.floor((chunk.length - at) / BLOCK) * BLOCK;
    this.blocks(chunk, at, whole);
    this.tailBytes = chunk.copy(this.tail, 0, whole);
  }

  /** Closes the file's content: the last partial block, then its size when it ends in a hole. */
  end(): void {
    if (this.tailBytes > 0 && !isZero(this.tail, 0, this.tailBytes))
      this.put(this.tail, 0, this.tailBytes, this.offset);
    // Only a file ending in a hole needs its size set (one call fewer for almost every file).
    if (this.size !== this.offset + this.tailBytes) ftruncateSync(this.fd, this.offset + this.tailBytes);
  }

  /** buf[from, to), whole blocks, at `offset`. */
  private blocks(buf: Buffer, from: number, to: number): void {
    const base = this.offset - from;
    let run = from;
    for (let at = from; at < to; at += BLOCK) {
      if (!isZero(buf, at, BLOCK)) continue;
      if (at > run) this.put(buf, run, at, base + run);
      run = at + BLOCK;
    }
    if (to > run) this.put(buf, run, to, base + run);
    this.offset += to - from;
  }

  private put(buf: Buffer, from: number, to: number, position: number): void {
    for (let done = 0; done < to - from;)
      done += writeSync(this.fd, buf, from + done, to - from - done, position + done);
    this.size = position + to - from;
    this.onWritten(to - from);
  }
}
