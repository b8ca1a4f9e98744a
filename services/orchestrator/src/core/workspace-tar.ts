/**
 * The tar streams of a workspace transfer. Outbound: host files (a scanned
 * list, never a directory walk of the guest's choosing) packed as they are
 * read, every entry owned by root. Inbound: a guest's tar written into a
 * fresh host directory without trusting it: no absolute names, no `..`, no
 * entry under a symlink or a file, files created with O_EXCL|O_NOFOLLOW,
 * hard links only to files already written, device nodes and fifos skipped.
 */
import { constants } from "node:fs";
import { chmod, copyFile, lstat, mkdir, open, rm, symlink } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { FailedPreconditionError, InternalError, ResourceExhaustedError } from "@banger/common";
import tar, { type Header, type Pack } from "tar-stream";

type HeaderArgument = Partial<Header> & Pick<Header, "name">;

/** One thing to send: a file, a symlink or a directory, at `path` inside the archive. */
export interface TreeEntry {
  /** Relative, "/"-separated, no "." or ".." components. */
  readonly path: string;
  readonly kind: "file" | "symlink" | "directory";
  /** The host file it is read from (files), for the error message otherwise. */
  readonly source: string;
  /** A symlink's target, as it is. */
  readonly linkTarget: string;
  /** Permission bits. */
  readonly mode: number;
  /** Bytes (files); 0 otherwise. */
  readonly size: number;
  /** Modification time as lstat gave it when scanned (files are checked against it when read). */
  readonly mtimeMs: number;
}

/** Files smaller than this are read whole; larger ones are streamed. */
const WHOLE_FILE_BYTES = 1024 * 1024;

const changed = (entry: TreeEntry) =>
  new FailedPreconditionError(
    `${entry.source} changed while the workspace was being copied; run the prepare again once it is quiet`,
    { reason: "FILE_CHANGED" },
  );

/**
 * A tar of `entries` in order, produced as it is read (the reader's pace sets
 * the pace of the file reads). `onBytes(bytes, fileDone)` reports file bytes as
 * they go, and `fileDone` once per file or symlink sent.
 */
export async function* packTree(
  entries: readonly TreeEntry[],
  onBytes: (bytes: number, fileDone: boolean) => void,
  signal: AbortSignal,
): AsyncGenerator<Buffer> {
  const pack = tar.pack();
  const producing = (async () => {
    for (const entry of entries) {
      signal.throwIfAborted();
      await addEntry(pack, entry, onBytes);
    }
    pack.finalize();
  })();
  producing.catch((error: unknown) => pack.destroy(error instanceof Error ? error : new Error(String(error))));
  try {
    for await (const chunk of pack as AsyncIterable<Buffer>) yield chunk;
    await producing;
  } finally {
    pack.destroy();
  }
}

async function addEntry(pack: Pack, entry: TreeEntry, onBytes: (bytes: number, fileDone: boolean) => void) {
  const base = { name: entry.path, mode: entry.mode & 0o7777, uid: 0, gid: 0, mtime: new Date(entry.mtimeMs) };
  if (entry.kind === "directory") return packBuffer(pack, { ...base, type: "directory" }, undefined);
  if (entry.kind === "symlink") {
    await packBuffer(pack, { ...base, mode: 0o777, type: "symlink", linkname: entry.linkTarget }, undefined);
    onBytes(0, true);
    return;
  }
  const handle = await open(entry.source, constants.O_RDONLY | constants.O_NOFOLLOW).catch((error: unknown) => {
    if ((error as NodeJS.ErrnoException).code === "ENOENT" || (error as NodeJS.ErrnoException).code === "ELOOP") {
      throw changed(entry);
    }
    throw error;
  });
  try {
    const stats = await handle.stat();
    if (!stats.isFile() || stats.size !== entry.size || stats.mtimeMs !== entry.mtimeMs) throw changed(entry);
    const header: HeaderArgument = { ...base, type: "file", size: entry.size };
    if (entry.size <= WHOLE_FILE_BYTES) {
      const content = Buffer.alloc(entry.size);
      const { bytesRead } = entry.size > 0 ? await handle.read(content, 0, entry.size, 0) : { bytesRead: 0 };
      if (bytesRead !== entry.size) throw changed(entry);
      await packBuffer(pack, header, content);
      onBytes(entry.size, true);
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const sink = pack.entry(header, (error) => (error ? reject(changed(entry)) : resolve()));
      sink.on("error", () => undefined); // reported through the callback
      void (async () => {
        try {
          for await (const chunk of handle.createReadStream({ start: 0, end: entry.size - 1, autoClose: false })) {
            const data = chunk as Buffer;
            if (!sink.write(data)) {
              // A destroyed pack closes the entry instead (its callback reports why).
              await new Promise<void>((resolve) => {
                const go = () => {
                  sink.off("drain", go);
                  sink.off("close", go);
                  resolve();
                };
                sink.on("drain", go);
                sink.on("close", go);
              });
            }
            if (sink.destroyed) return;
            onBytes(data.length, false);
          }
          sink.end(undefined);
          onBytes(0, true);
        } catch (error) {
          sink.destroy(error as Error);
          reject(error instanceof Error ? error : new Error(String(error)));
        }
      })();
    });
  } finally {
    await handle.close();
  }
}

function packBuffer(pack: Pack, header: HeaderArgument, content: Buffer | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (error?: Error | null) => (error ? reject(error) : resolve());
    if (content === undefined) pack.entry(header, done);
    else pack.entry(header, content, done);
  });
}

/** What an extraction wrote. */
export interface ExtractResult {
  readonly files: number;
  readonly bytes: number;
}

const hostile = (name: string, why: string) =>
  new InternalError(`the guest's tar has an entry ${JSON.stringify(name)} that ${why}`, {
    reason: "UNSAFE_GUEST_TAR",
  });

/** "./a/b/" → "a/b"; undefined for the root itself; throws for names that leave the tree. */
export function entryPath(name: string): string | undefined {
  if (name.startsWith("/")) throw hostile(name, "is absolute");
  const parts = name.split("/").filter((part) => part !== "" && part !== ".");
  if (parts.includes("..")) throw hostile(name, "climbs out with ..");
  return parts.length === 0 ? undefined : parts.join("/");
}

/** Whether `path` or one of its ancestors is left out. */
function skippedBy(path: string, skip: (path: string) => boolean): boolean {
  const parts = path.split("/");
  for (let i = 1; i <= parts.length; i++) if (skip(parts.slice(0, i).join("/"))) return true;
  return false;
}

/** What a guest's tar may make on the host: the guest is not trusted to send a bounded one. */
export interface ExtractLimits {
  /** File bytes written, hard links' copies included. */
  readonly maxBytes: number;
  /** Entries of any kind (each costs an inode and a map entry here). */
  readonly maxEntries: number;
}

/** Entries a workspace export may hold when the caller names no other limit. */
export const DEFAULT_MAX_ENTRIES = 1_000_000;

/**
 * Writes the tar read from `source` into `root` (an empty directory only this
 * process writes to). `skip(path)` leaves entries out (and everything under
 * them). A tar beyond `limits` stops with RESOURCE_EXHAUSTED naming the limit,
 * having written at most a chunk more than it. Returns once everything is on disk.
 */
export async function extractTree(
  source: Readable,
  root: string,
  skip: (path: string) => boolean,
  signal: AbortSignal,
  limits: ExtractLimits = { maxBytes: Number.MAX_SAFE_INTEGER, maxEntries: DEFAULT_MAX_ENTRIES },
): Promise<ExtractResult> {
  const extract = tar.extract();
  /** What this extraction made, by path: the tree holds nothing else. */
  const made = new Map<string, "dir" | "file" | "symlink">();
  let files = 0;
  let bytes = 0;
  let entries = 0;
  const abs = (path: string) => join(root, path);
  const addBytes = (count: number) => {
    bytes += count;
    if (bytes > limits.maxBytes) {
      throw new ResourceExhaustedError(
        `the guest's tar holds more than the ${limits.maxBytes} bytes this host can take for it`,
        { reason: "GUEST_TAR_TOO_LARGE" },
      );
    }
  };

  async function parents(path: string, name: string) {
    const parts = path.split("/").slice(0, -1);
    for (let i = 1; i <= parts.length; i++) {
      const dir = parts.slice(0, i).join("/");
      const kind = made.get(dir);
      if (kind === "dir") continue;
      if (kind !== undefined) throw hostile(name, `lies under ${dir}, which is not a directory`);
      await mkdir(abs(dir), { mode: 0o755 });
      made.set(dir, "dir");
    }
  }

  /** Makes room for a new entry at `path` (a later entry replaces an earlier one, as tar does). */
  async function clear(path: string, name: string, becomes: "dir" | "file" | "symlink") {
    const kind = made.get(path);
    if (kind === undefined) return;
    if (kind === "dir" && becomes !== "dir") throw hostile(name, "replaces a directory");
    if (kind !== "dir") {
      await rm(abs(path), { force: true });
      made.delete(path);
    }
  }

  async function onEntry(header: Header, stream: AsyncIterable<unknown> & { resume(): unknown }): Promise<void> {
    if (++entries > limits.maxEntries) {
      throw new ResourceExhaustedError(`the guest's tar holds more than ${limits.maxEntries} entries`, {
        reason: "GUEST_TAR_TOO_MANY_ENTRIES",
      });
    }
    const path = entryPath(header.name);
    if (path === undefined || skippedBy(path, skip)) {
      stream.resume();
      return;
    }
    const mode = (header.mode ?? 0o644) & 0o777;
    switch (header.type) {
      case "directory": {
        await parents(path, header.name);
        await clear(path, header.name, "dir");
        if (!made.has(path)) {
          await mkdir(abs(path), { mode: 0o755 });
          made.set(path, "dir");
        }
        stream.resume();
        return;
      }
      case "file":
      case "contiguous-file": {
        await parents(path, header.name);
        await clear(path, header.name, "file");
        const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
        const handle = await open(abs(path), flags, 0o600);
        made.set(path, "file");
        try {
          for await (const data of stream) {
            const chunk = data as Buffer;
            addBytes(chunk.length);
            await handle.write(chunk);
          }
          // Only the executable bit matters to git; the rest follows the umask-free default.
          await handle.chmod(mode & 0o100 ? 0o755 : 0o644);
        } finally {
          await handle.close();
        }
        files++;
        return;
      }
      case "symlink": {
        await parents(path, header.name);
        await clear(path, header.name, "symlink");
        await symlink(header.linkname ?? "", abs(path)); // made, never followed
        made.set(path, "symlink");
        stream.resume();
        return;
      }
      case "link": {
        const target = entryPath(header.linkname ?? "");
        if (target === undefined || made.get(target) !== "file") {
          throw hostile(header.name, `is a hard link to ${JSON.stringify(header.linkname)}, not to a file before it`);
        }
        await parents(path, header.name);
        await clear(path, header.name, "file");
        // A hard link becomes a copy here: a thousand links to one big file are a thousand copies.
        addBytes((await lstat(abs(target))).size);
        await copyFile(abs(target), abs(path), constants.COPYFILE_EXCL);
        await chmod(abs(path), (await lstat(abs(target))).mode & 0o777);
        made.set(path, "file");
        files++;
        stream.resume();
        return;
      }
      default:
        // Devices, fifos, pax records: nothing a workspace holds.
        stream.resume();
    }
  }

  extract.on("entry", (header, stream, next) => {
    stream.on("error", () => undefined); // fails with the extract, which reports it
    onEntry(header, stream).then(
      () => next(),
      (error: unknown) => {
        stream.resume();
        extract.destroy(error as Error);
      },
    );
  });
  await pipeline(source, extract, { signal });
  return { files, bytes };
}
