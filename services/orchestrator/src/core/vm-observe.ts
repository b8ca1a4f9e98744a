/**
 * Looking at VMs from the host: their logs (whole, tail, followed), resource
 * use of the VMM process and the disk files, and how to reach them with the
 * system `ssh` (banger's key, and a banger-owned known_hosts that pins each
 * VM's host key on first contact and forgets it when the VM is deleted).
 */
import { open, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { FailedPreconditionError, runProcess } from "@banger/common";
import type { VmmState } from "./host.js";

const MAX_CHUNK = 64 * 1024;
const FOLLOW_POLL_MS = 250;

/** The last `lines` lines of `text` (all of it for 0). */
export function lastLines(text: Buffer, lines: number): Buffer {
  if (lines === 0) return text;
  let end = text.length;
  if (end > 0 && text[end - 1] === 0x0a) end -= 1; // a final newline ends the last line, it does not start one
  let seen = 0;
  for (let i = end - 1; i >= 0; i--) {
    if (text[i] === 0x0a && ++seen === lines) return text.subarray(i + 1);
  }
  return text;
}

/** Splits `data` into chunks of at most 64 KiB, ending at a newline where one is in reach. */
export function* chunks(data: Buffer): Generator<Buffer> {
  let start = 0;
  while (start < data.length) {
    let end = Math.min(start + MAX_CHUNK, data.length);
    if (end < data.length) {
      const newline = data.lastIndexOf(0x0a, end - 1);
      if (newline >= start) end = newline + 1;
    }
    yield data.subarray(start, end);
    start = end;
  }
}

/** A file's identity and size; undefined when it is not there. */
async function look(path: string): Promise<{ ino: number; size: number } | undefined> {
  try {
    const { ino, size } = await stat(path);
    return { ino, size };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
}

/**
 * Bytes `from`..`to` of the file at `path` if it is still the one `look` saw (inode `ino`); undefined when the
 * relay rotated it away in between (the caller looks again).
 */
async function readRange(path: string, ino: number, from: number, to: number): Promise<Buffer | undefined> {
  let file;
  try {
    file = await open(path, "r");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  try {
    if ((await file.stat()).ino !== ino) return undefined;
    if (to <= from) return Buffer.alloc(0);
    const buffer = Buffer.alloc(to - from);
    const { bytesRead } = await file.read(buffer, 0, buffer.length, from);
    return buffer.subarray(0, bytesRead);
  } finally {
    await file.close();
  }
}

/** Where the VMM's log relay moves a full log: the output just before what `path` holds. */
export function predecessorOf(path: string): string {
  return `${path}.1`;
}

/**
 * A log file's bytes: the last `tailLines` lines (or all) of its predecessor
 * and itself together (the log relay keeps the newest output in `path` and
 * what came just before in `path.1`), then, with `follow`, what is appended
 * until `signal` aborts or `stillThere` says the VM is gone. When the relay
 * rotates (`path` is a new file), the rest of the old one is read from
 * `path.1` and the new one from its start; a file that shrinks (the VMM
 * started again) is followed from its start.
 */
export async function* readLog(
  path: string,
  options: { tailLines: number; follow: boolean; signal: AbortSignal; stillThere: () => Promise<boolean> },
): AsyncGenerator<Buffer> {
  const previousPath = predecessorOf(path);
  let current = await look(path);
  const previous = await look(previousPath);
  const before = previous ? await readRange(previousPath, previous.ino, 0, previous.size) : undefined;
  const now = current ? await readRange(path, current.ino, 0, current.size) : undefined;
  // Rotated between the look and the read: follow from the file there is now.
  if (now === undefined) current = undefined;
  const text = Buffer.concat([before ?? Buffer.alloc(0), now ?? Buffer.alloc(0)]);
  if (text.length > 0) yield* chunks(lastLines(text, options.tailLines));
  let ino = current?.ino;
  let offset = current?.size ?? 0;
  while (options.follow && !options.signal.aborted) {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, FOLLOW_POLL_MS);
      options.signal.addEventListener("abort", () => (clearTimeout(timer), resolve(undefined)), { once: true });
    });
    if (options.signal.aborted || !(await options.stillThere())) return;
    current = await look(path);
    if (current === undefined) continue;
    if (current.ino !== ino) {
      const moved = await look(previousPath);
      if (ino !== undefined && moved?.ino === ino && moved.size > offset) {
        yield* chunks((await readRange(previousPath, moved.ino, offset, moved.size)) ?? Buffer.alloc(0));
      }
      ino = current.ino;
      offset = 0;
    }
    if (current.size < offset) offset = 0;
    if (current.size > offset) {
      const data = await readRange(path, current.ino, offset, current.size);
      if (data === undefined) continue; // rotated since the look: the next one sees the new file
      yield* chunks(data);
      offset += data.length;
    }
  }
}

export interface VmUsage {
  readonly time: Date;
  readonly cpuTimeMs: number;
  readonly cpuPercent: number;
  readonly memoryRssBytes: number;
  readonly rootDiskUsedBytes: number;
  readonly workDiskUsedBytes: number;
}

/**
 * Resource use of a running VM: its VMM over `windowMs` (as the helper sees it: bangerd's unit cannot
 * read another user namespace's /proc), and the blocks its disk files hold.
 */
export async function measureVm(
  vmm: () => Promise<VmmState>,
  disks: { root: string; work: string },
  windowMs = 1000,
): Promise<VmUsage> {
  const sample = async () => {
    const state = await vmm();
    if (!state.running) throw new FailedPreconditionError("the VM's VMM is gone", { reason: "VM_NOT_RUNNING" });
    return state;
  };
  const before = await sample();
  const t0 = performance.now();
  await new Promise((resolve) => setTimeout(resolve, windowMs));
  const after = await sample();
  const seconds = (performance.now() - t0) / 1000;
  const used = async (path: string) => ((await stat(path).catch(() => undefined))?.blocks ?? 0) * 512;
  return {
    time: new Date(),
    cpuTimeMs: after.cpuTimeMs,
    cpuPercent: ((after.cpuTimeMs - before.cpuTimeMs) / 1000 / seconds) * 100,
    memoryRssBytes: after.rssBytes,
    rootDiskUsedBytes: await used(disks.root),
    workDiskUsedBytes: await used(disks.work),
  };
}

export interface SshTarget {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly identityFile: string;
  readonly knownHostsFile: string;
  readonly hostKeyAlias: string;
  readonly sshArgv: string[];
}

/**
 * How the system `ssh` reaches a VM. The host key is pinned under
 * `<name>.vm` in banger's own known_hosts on first contact
 * (StrictHostKeyChecking=accept-new); a changed key is then refused.
 */
export function sshTarget(
  vm: { name: string; guestIp: string },
  identityFile: string,
  knownHostsFile: string,
): SshTarget {
  const alias = `${vm.name}.vm`;
  return {
    host: vm.guestIp,
    port: 22,
    user: "root",
    identityFile,
    knownHostsFile,
    hostKeyAlias: alias,
    sshArgv: [
      "ssh",
      "-i",
      identityFile,
      "-o",
      "IdentitiesOnly=yes",
      "-o",
      `UserKnownHostsFile=${knownHostsFile}`,
      "-o",
      "StrictHostKeyChecking=accept-new",
      "-o",
      `HostKeyAlias=${alias}`,
      "-p",
      "22",
      `root@${vm.guestIp}`,
    ],
  };
}

/** Forgets a VM's pinned host key (a new VM of that name gets a new key). Best effort: no file, no key, fine. */
export async function forgetHostKey(knownHostsFile: string, vmName: string): Promise<void> {
  if (((await look(knownHostsFile))?.size ?? 0) === 0) return;
  await runProcess(["ssh-keygen", "-R", `${vmName}.vm`, "-f", knownHostsFile], { env: process.env }).catch(
    () => undefined,
  );
  await rm(`${knownHostsFile}.old`, { force: true }); // ssh-keygen keeps the previous content there
}

/** banger's known_hosts beside its guest key. */
export function knownHostsPath(sshDir: string): string {
  return join(sshDir, "known_hosts");
}
