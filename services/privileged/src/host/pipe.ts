import koffi from "koffi";

// Node has no pipe(2) for handing raw descriptors to detached children; koffi calls pipe2 without a compiler.
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const F_GETFL = 3;
const F_SETFL = 4;

const libc = koffi.load("libc.so.6");
const pipe2 = libc.func("pipe2", "int", [koffi.out(koffi.pointer(koffi.array("int", 2))), "int"]);
const fcntl = libc.func("int fcntl(int fd, int cmd, int arg)");

/** A pipe's two ends. */
export interface Pipe {
  readonly read: number;
  readonly write: number;
}

/**
 * A pipe whose ends close on exec (only a child handed an end as its stdio keeps it), the write
 * end non-blocking: a writer whose reader stalls gets EAGAIN instead of waiting.
 */
export function nonBlockingWriterPipe(): Pipe {
  const fds: [Int32Array | number[]] = [[0, 0]];
  if (pipe2(fds, O_CLOEXEC) !== 0) throw new Error("pipe2 failed");
  const [read, write] = fds[0];
  if (read === undefined || write === undefined) throw new Error("pipe2 returned no descriptors");
  const flags = fcntl(write, F_GETFL, 0) as number;
  if (flags < 0 || (fcntl(write, F_SETFL, flags | O_NONBLOCK) as number) !== 0) {
    throw new Error("fcntl O_NONBLOCK failed");
  }
  return { read, write };
}
