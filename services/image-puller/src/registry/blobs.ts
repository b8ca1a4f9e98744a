/**
 * Blobs fetched into the verified blob cache: a cached blob is never fetched
 * again, concurrent fetches of one digest share a single download (stopped
 * when the last one waiting gives up), and a body cut short or longer than
 * its descriptor says is refused.
 */
import { stat } from "node:fs/promises";
import { abortError, type ImageReference } from "@banger/common/registry";
import type { BlobBody, BlobCache, FetchBlobOptions, GrowingBlob } from "../core/ports.js";
import { blobTruncated, DigestMismatchError } from "./digest.js";
import { raceAbort } from "./http.js";
import type { Descriptor } from "./manifest.js";
import { statusError } from "./responses.js";
import type { Transport } from "./transport.js";

interface SharedDownload {
  readonly promise: Promise<string>;
  readonly controller: AbortController;
  readonly listeners: Set<(doneBytes: number) => void>;
  /** The blob as it is written, once it is; and who waits for it. */
  growing?: GrowingBlob;
  readonly writingListeners: Set<(blob: GrowingBlob) => void>;
  waiters: number;
}

/** What one registry client holds: its cache, its transport, and the downloads under way. */
export interface ClientContext {
  readonly cache: BlobCache;
  readonly transport: Transport;
  /** By digest and size. */
  readonly downloads: Map<string, SharedDownload>;
}

export function pullScope(reference: ImageReference): string {
  return `repository:${reference.repository}:pull`;
}

/** A fetch body whose failures say what was being downloaded. */
async function* guardedBody(
  body: ReadableStream<Uint8Array> | null,
  descriptor: Descriptor,
  signal: AbortSignal,
): AsyncGenerator<Uint8Array> {
  if (body === null) return;
  const reader = body.getReader();
  let done = 0;
  let finished = false;
  try {
    for (;;) {
      let next: Awaited<ReturnType<typeof reader.read>>;
      try {
        next = await reader.read();
      } catch (error) {
        if (signal.aborted) throw abortError(signal);
        throw blobTruncated(descriptor.digest, done, descriptor.size, error);
      }
      if (next.done) {
        finished = true;
        return;
      }
      done += next.value.byteLength;
      yield next.value;
    }
  } finally {
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

async function download(
  ctx: ClientContext,
  reference: ImageReference,
  descriptor: Descriptor,
  signal: AbortSignal,
  onProgress: (doneBytes: number) => void,
  onWriting: (blob: GrowingBlob) => void,
): Promise<string> {
  const response = await ctx.transport.request(reference.registry, {
    method: "GET",
    path: `/v2/${reference.repository}/blobs/${descriptor.digest}`,
    scope: pullScope(reference),
    signal,
  });
  if (!response.ok) {
    throw await statusError(response, {
      registry: reference.registry,
      repository: reference.repository,
      kind: "blob",
      target: descriptor.digest,
    });
  }
  const announced = response.headers.get("content-length");
  if (announced !== null && Number(announced) > descriptor.size) {
    await response.body?.cancel().catch(() => {});
    throw new DigestMismatchError(
      `blob ${descriptor.digest} is announced as ${announced} bytes, more than the ${descriptor.size} its descriptor says`,
      descriptor.digest,
    );
  }
  const body: BlobBody = guardedBody(response.body, descriptor, signal);
  return ctx.cache.put(descriptor.digest, descriptor.size, body, onProgress, onWriting);
}

async function cachedPath(cache: BlobCache, descriptor: Descriptor): Promise<string | undefined> {
  const path = cache.path(descriptor.digest);
  try {
    const info = await stat(path);
    if (!info.isFile()) return undefined;
    if (info.size !== descriptor.size) {
      throw new DigestMismatchError(
        `cached blob ${descriptor.digest} is ${info.size} bytes, but its descriptor says ${descriptor.size}`,
        descriptor.digest,
      );
    }
    return path;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
}

/** The download of `descriptor` under way, or a new one. */
function sharedDownload(ctx: ClientContext, reference: ImageReference, descriptor: Descriptor): SharedDownload {
  const { downloads } = ctx;
  // Keyed by size too: a descriptor that lies about it must not share another's download.
  const key = `${descriptor.digest}/${descriptor.size}`;
  const shared = downloads.get(key);
  if (shared !== undefined && !shared.controller.signal.aborted) return shared;
  const controller = new AbortController();
  const listeners = new Set<(doneBytes: number) => void>();
  const writingListeners = new Set<(blob: GrowingBlob) => void>();
  const promise = download(
    ctx,
    reference,
    descriptor,
    controller.signal,
    (doneBytes) => {
      for (const listener of listeners) listener(doneBytes);
    },
    (blob) => {
      entry.growing = blob;
      for (const listener of writingListeners) listener(blob);
    },
  ).finally(() => {
    if (downloads.get(key) === entry) downloads.delete(key);
  });
  promise.catch(() => {}); // each waiter gets the error through raceAbort
  const entry: SharedDownload = { promise, controller, listeners, writingListeners, waiters: 0 };
  downloads.set(key, entry);
  return entry;
}

/** See RegistryClient.fetchBlob. */
export async function fetchBlob(
  ctx: ClientContext,
  reference: ImageReference,
  descriptor: Descriptor,
  options: FetchBlobOptions,
): Promise<string> {
  const { signal, onProgress, onWriting } = options;
  if (signal.aborted) throw abortError(signal);
  const cached = await cachedPath(ctx.cache, descriptor);
  if (cached !== undefined) return cached;

  const job = sharedDownload(ctx, reference, descriptor);
  job.waiters += 1;
  if (onProgress !== undefined) job.listeners.add(onProgress);
  if (onWriting !== undefined) {
    if (job.growing) onWriting(job.growing);
    else job.writingListeners.add(onWriting);
  }
  try {
    return await raceAbort(job.promise, signal);
  } finally {
    if (onProgress !== undefined) job.listeners.delete(onProgress);
    if (onWriting !== undefined) job.writingListeners.delete(onWriting);
    job.waiters -= 1;
    // The last one waiting gave up: stop downloading.
    if (job.waiters === 0 && signal.aborted) job.controller.abort(signal.reason);
  }
}
