/**
 * A blob while the cache writes it: its bytes can be read as they land in the
 * temporary file, before the whole blob is hashed and verified, so a layer is
 * unpacked while it downloads instead of after. The reader never runs ahead
 * of what was written and never holds more than one chunk; it fails with the
 * download's own error when the download fails (a digest mismatch, a body cut
 * short), and ends only once the blob is verified and under its final name.
 * Whoever reads it still holds unverified bytes until `done` resolves: the
 * puller throws its tree away when it rejects.
 */
import { closeSync, openSync, readSync } from "node:fs";
import { Readable } from "node:stream";
import type { GrowingBlob } from "../core/ports.js";

/** Bytes read from the file at a time. */
const CHUNK = 256 * 1024;

export class GrowingFile implements GrowingBlob {
  private written = 0;
  private outcome: { readonly path: string } | { readonly error: unknown } | undefined;
  private readonly waiters = new Set<() => void>();
  readonly done: Promise<string>;
  private settle!: { resolve: (path: string) => void; reject: (error: unknown) => void };

  constructor(
    private readonly tempPath: string,
    private readonly finalPath: string,
  ) {
    this.done = new Promise<string>((resolve, reject) => (this.settle = { resolve, reject }));
    this.done.catch(() => undefined); // a reader gets it through its stream
  }

  /** Bytes [0, `bytes`) are in the temporary file. */
  advance(bytes: number): void {
    this.written = bytes;
    this.wake();
  }

  /** The blob is verified and under its final name. */
  finish(): void {
    this.outcome = { path: this.finalPath };
    this.settle.resolve(this.finalPath);
    this.wake();
  }

  fail(error: unknown): void {
    if (this.outcome !== undefined) return;
    this.outcome = { error };
    this.settle.reject(error);
    this.wake();
  }

  /** Resolves on the next write, the end, or a failure. */
  private next(): Promise<void> {
    return new Promise((resolve) => this.waiters.add(resolve));
  }

  private wake(): void {
    const waiters = [...this.waiters];
    this.waiters.clear();
    for (const resolve of waiters) resolve();
  }

  async head(bytes: number): Promise<Buffer> {
    while (this.written < bytes && this.outcome === undefined) await this.next();
    if (this.outcome !== undefined && "error" in this.outcome) throw this.outcome.error;
    const fd = this.open();
    try {
      const buf = Buffer.alloc(bytes);
      return buf.subarray(0, readSync(fd, buf, 0, bytes, 0));
    } finally {
      closeSync(fd);
    }
  }

  stream(): Readable {
    let fd: number | undefined;
    let position = 0;
    const source = new Readable({
      highWaterMark: CHUNK,
      read: () => {
        void (async () => {
          try {
            while (position >= this.written && this.outcome === undefined) await this.next();
            if (source.destroyed) return;
            if (this.outcome !== undefined && "error" in this.outcome) throw this.outcome.error;
            if (position >= this.written) {
              source.push(null);
              return;
            }
            fd ??= this.open();
            const buf = Buffer.allocUnsafe(Math.min(CHUNK, this.written - position));
            const got = readSync(fd, buf, 0, buf.length, position);
            position += got;
            source.push(got === buf.length ? buf : buf.subarray(0, got));
          } catch (error) {
            source.destroy(error as Error);
          }
        })();
      },
      destroy: (error, callback) => {
        if (fd !== undefined) closeSync(fd);
        fd = undefined;
        callback(error);
      },
    });
    return source;
  }

  /** The file as it is now: the temporary one while it is written, the final one once it is verified. */
  private open(): number {
    if (this.outcome !== undefined && "path" in this.outcome) return openSync(this.outcome.path, "r");
    try {
      return openSync(this.tempPath, "r");
    } catch (error) {
      if (this.outcome !== undefined && "error" in this.outcome) throw this.outcome.error; // removed as it failed
      // Renamed between the check and the open: verified by now.
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return openSync(this.finalPath, "r");
      throw error;
    }
  }
}
