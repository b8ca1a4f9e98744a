/**
 * A private temp directory for the files the owner's debugfs reads and writes by name (guest file
 * contents in, dumps out): nobody but the helper can add, rename or remove an entry in it.
 */
import { chmod, mkdtemp, open, rm, type FileHandle } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InternalError } from "@banger/common/errors";
import type { HelperConfig } from "../config.js";

/** A host path debugfs reads literally (the helper's own temp files). */
const DEBUGFS_SAFE_HOST_PATH = /^[A-Za-z0-9._+@=:,~/-]+$/;

/** A file of the private temp directory, the owner's, that the helper keeps open. */
export interface OwnersFile {
  readonly path: string;
  /**
   * At most `limit` bytes of what the file holds now, through the helper's own
   * descriptor (the installed helper has no CAP_DAC_OVERRIDE to open the
   * owner's 0600 file again; and the owner's tool wrote it: its size is not trusted).
   */
  read(limit: number): Promise<Buffer>;
}

/** A private temp directory whose files the owner's debugfs can use by name but nobody else can replace. */
export interface PrivateTempDir {
  /** Creates `name` (new, 0600) holding `content`, owned by the owner. */
  ownersFile(name: string, content: Uint8Array): Promise<OwnersFile>;
}

/**
 * A directory under the system temp dir, root's and 0711 (the owner's tools
 * reach files in it by name, but cannot list, add, rename or remove any), its
 * files created by the helper and handed to the owner by descriptor; removed
 * afterwards whatever happens.
 */
export async function withPrivateTempDir<T>(
  config: HelperConfig,
  body: (dir: PrivateTempDir) => Promise<T>,
): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "banger-guest-"));
  if (!DEBUGFS_SAFE_HOST_PATH.test(dir)) {
    await rm(dir, { recursive: true, force: true });
    throw new InternalError(`temp directory ${dir} has characters debugfs cannot take`, { reason: "UNSAFE_TEMP_DIR" });
  }
  const handles: FileHandle[] = [];
  const temp: PrivateTempDir = {
    async ownersFile(name, content) {
      const path = `${dir}/${name}`;
      const handle = await open(path, "wx+", 0o600);
      handles.push(handle);
      await handle.writeFile(content);
      await handle.chown(config.ownerUid, config.ownerGid);
      return { path, read: (limit) => readUpTo(handle, limit) };
    },
  };
  const cleanUp = async () => {
    for (const handle of handles.splice(0)) await handle.close();
    await rm(dir, { recursive: true, force: true });
  };
  let result: T;
  try {
    await chmod(dir, 0o711);
    result = await body(temp);
  } catch (error) {
    try {
      await cleanUp();
    } catch (cleanup) {
      if (error instanceof Error) error.message += ` (and removing ${dir} failed: ${String(cleanup)})`;
    }
    throw error;
  }
  await cleanUp();
  return result;
}

/** At most `limit` bytes of an open file, from its start. */
async function readUpTo(handle: FileHandle, limit: number): Promise<Buffer> {
  const buffer = Buffer.alloc(limit);
  let length = 0;
  while (length < limit) {
    const { bytesRead } = await handle.read(buffer, length, limit - length, length);
    if (bytesRead === 0) break;
    length += bytesRead;
  }
  return buffer.subarray(0, length);
}
