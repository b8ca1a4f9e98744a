/** The shapes DiskService speaks in, as the ops see them (disk.proto has the wire forms). */

/** A loop device whose backing file is inside banger's state directory. */
export interface LoopInfo {
  device: string;
  backingFile: string;
  readOnly: boolean;
}

/** A dm device whose uuid carries banger's prefix. */
export interface SnapshotInfo {
  name: string;
  uuid: string;
  /** The VM the uuid names; empty if the rest of the uuid is not a valid VM id. */
  vmId: string;
  device: string;
}

/** A file to write into a guest filesystem. */
export interface GuestFileSpec {
  /** Absolute guest path (see validGuestPath). */
  path: string;
  /** At most 1 MiB. */
  content: Uint8Array;
  /** Permission bits including setuid/setgid/sticky, at most 0o7777. */
  mode: number;
  uid: number;
  gid: number;
}
