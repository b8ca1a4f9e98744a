import type { Socket } from "node:net";
import koffi from "koffi";
import type { PeerCredentials } from "@banger/common/op-id";

// Node has no API for SO_PEERCRED; koffi calls getsockopt(2) without a compiler.
const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
const UCRED_SIZE = 12;

const libc = koffi.load("libc.so.6");
const Ucred = koffi.struct("banger_ucred", { pid: "int32", uid: "uint32", gid: "uint32" });
const getsockopt = libc.func(
  "int getsockopt(int fd, int level, int name, _Out_ banger_ucred *value, _Inout_ uint32 *length)",
);

/** The kernel's word on who is at the other end of a Unix socket connection. */
export function peerCredentials(socket: Socket): PeerCredentials | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) return undefined;
  const cred: { pid?: number; uid?: number; gid?: number } = {};
  const length = [UCRED_SIZE];
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, length) !== 0) return undefined;
  if (cred.pid === undefined || cred.uid === undefined || cred.gid === undefined) return undefined;
  return { pid: cred.pid, uid: cred.uid, gid: cred.gid };
}

export { Ucred };
