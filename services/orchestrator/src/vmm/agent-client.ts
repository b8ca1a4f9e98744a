/**
 * A client of the guest agent of banger's guest kit: qemu-ga, speaking the
 * QEMU guest agent protocol (QGA: JSON commands, one answer each) over
 * - QEMU: the virtio-serial port's socket in the VM's runtime directory
 *   (`agent.sock`; QEMU serves one client at a time);
 * - Firecracker: its hybrid vsock socket (`vsock.sock`): the host connects,
 *   writes `CONNECT <port>\n` and reads `OK <host port>\n`, then the stream
 *   is the guest's port (qemu-ga `-m vsock-listen`).
 *
 * One connection per call. A channel may hold what an earlier client left
 * unread (virtio-serial keeps bytes across connections), so every session
 * starts with `guest-sync-delimited`: a 0xFF byte, the command with a fresh
 * id, then everything up to the agent's own 0xFF and the answer carrying
 * that id is discarded.
 *
 * Errors: an `error` answer is a FailedPreconditionError `AGENT_ERROR` with
 * the agent's words; a socket that is missing, refuses, or a vsock port no
 * one listens on is an UnavailableError `AGENT_UNREACHABLE`; no answer in
 * time is a DeadlineExceededError `AGENT_TIMEOUT`; an answer over
 * `MAX_ANSWER_BYTES` (the guest is not trusted) is a ResourceExhaustedError
 * `AGENT_ANSWER_TOO_LARGE`.
 */
import { randomInt } from "node:crypto";
import { connect, type Socket } from "node:net";
import {
  DeadlineExceededError,
  FailedPreconditionError,
  ResourceExhaustedError,
  UnavailableError,
} from "@banger/common";
import type { AgentClient, AgentConnector } from "../core/ports.js";

export type { AgentClient, AgentConnector, AgentInfo } from "../core/ports.js";

/** QEMU: the virtio-serial port's socket. */
export function unixAgentConnector(socketPath: string): AgentConnector {
  return (signal) => openSocket(socketPath, signal);
}

/** Firecracker: the hybrid vsock handshake on the VM's vsock socket, to the guest's `port`. */
export function hybridVsockConnector(udsPath: string, port: number): AgentConnector {
  return async (signal) => {
    const socket = await openSocket(udsPath, signal);
    try {
      socket.write(`CONNECT ${port}\n`);
      const reply = await readUntil(socket, 0x0a, signal);
      const line = reply.line.toString("latin1");
      if (!/^OK \d+$/.test(line)) {
        throw new UnavailableError(`the guest's vsock port ${port} refused the connection: ${JSON.stringify(line)}`, {
          reason: "AGENT_UNREACHABLE",
        });
      }
      if (reply.rest.length > 0) socket.unshift(reply.rest);
      return socket;
    } catch (error) {
      socket.destroy();
      throw error;
    }
  };
}

/** How often guest-exec-status is asked while a program runs. */
const EXEC_POLL_MS = 20;

export function createAgentClient(connector: AgentConnector): AgentClient {
  /** Opens a session (synced), runs `work` with a `call` function, closes. */
  async function session<T>(
    timeoutMs: number,
    work: (call: (command: object, answerMs?: number) => Promise<unknown>) => Promise<T>,
  ): Promise<T> {
    const signal = AbortSignal.timeout(timeoutMs);
    const socket = await connector(signal);
    let buffered = Buffer.alloc(0);
    const readJson = async (ms: number): Promise<Record<string, unknown>> => {
      const deadline = AbortSignal.any([signal, AbortSignal.timeout(ms)]);
      for (;;) {
        const newline = buffered.indexOf(0x0a);
        // The guest writes this: what it may make the host hold is bounded.
        if (newline > MAX_ANSWER_BYTES || (newline < 0 && buffered.length > MAX_ANSWER_BYTES)) throw tooLarge();
        if (newline >= 0) {
          const line = buffered.subarray(0, newline).toString("utf8").trim();
          buffered = buffered.subarray(newline + 1);
          if (line === "") continue;
          try {
            return JSON.parse(line) as Record<string, unknown>;
          } catch {
            continue; // a fragment of an earlier client's answer
          }
        }
        buffered = Buffer.concat([buffered, await readChunk(socket, deadline)]);
      }
    };
    try {
      // The sync: 0xFF, then guest-sync-delimited; the agent answers 0xFF then {"return": id}.
      const id = randomInt(1, 2 ** 31);
      socket.write(
        Buffer.concat([
          Buffer.from([0xff]),
          Buffer.from(JSON.stringify({ execute: "guest-sync-delimited", arguments: { id } }) + "\n"),
        ]),
      );
      for (;;) {
        const marker = buffered.indexOf(0xff);
        if (marker >= 0) {
          buffered = buffered.subarray(marker + 1);
          break;
        }
        buffered = buffered.length > MAX_ANSWER_BYTES ? Buffer.alloc(0) : buffered;
        buffered = Buffer.concat([buffered, await readChunk(socket, signal)]);
      }
      for (;;) {
        const answer = await readJson(timeoutMs);
        if (answer["return"] === id) break;
      }
      return await work(async (command, answerMs = timeoutMs) => {
        socket.write(`${JSON.stringify(command)}\n`);
        const answer = await readJson(answerMs);
        const error = answer["error"] as { desc?: string } | undefined;
        if (error) {
          throw new FailedPreconditionError(
            `guest agent ${(command as { execute?: string }).execute ?? "?"}: ${error.desc ?? JSON.stringify(error)}`,
            { reason: "AGENT_ERROR" },
          );
        }
        return answer["return"];
      });
    } finally {
      socket.destroy();
    }
  }

  return {
    ping: (timeoutMs) =>
      session(timeoutMs, async (call) => {
        await call({ execute: "guest-ping" });
        const info = (await call({ execute: "guest-info" })) as { version?: string } | undefined;
        return { version: info?.version ?? "" };
      }),
    shutdown: (answerMs, timeoutMs = answerMs + 5_000) =>
      session(timeoutMs, async (call) => {
        try {
          await call({ execute: "guest-shutdown", arguments: { mode: "powerdown" } }, answerMs);
        } catch (error) {
          // No answer is the agent's way of saying it works; so is the guest closing the channel.
          if (error instanceof DeadlineExceededError || error instanceof UnavailableError) return;
          throw error;
        }
      }),
    exec: (path, args, timeoutMs) =>
      session(timeoutMs, async (call) => {
        const result = (await call({ execute: "guest-exec", arguments: { path, arg: args } })) as { pid?: number };
        return result.pid ?? 0;
      }),
    fsfreeze: (action, timeoutMs) =>
      session(timeoutMs, async (call) => {
        const count = await call({ execute: `guest-fsfreeze-${action}` });
        return typeof count === "number" ? count : 0;
      }),
    run: (path, args, timeoutMs, options) =>
      session(timeoutMs, async (call) => {
        if (options?.thawFirst) await call({ execute: "guest-fsfreeze-thaw" });
        const started = (await call({
          execute: "guest-exec",
          arguments: { path, arg: args, "capture-output": true },
        })) as { pid?: number };
        if (options?.firstPollMs) await new Promise((resolve) => setTimeout(resolve, options.firstPollMs));
        for (;;) {
          const status = (await call({ execute: "guest-exec-status", arguments: { pid: started.pid ?? 0 } })) as {
            exited?: boolean;
            exitcode?: number;
            signal?: number;
            "out-data"?: string;
            "err-data"?: string;
          };
          if (status.exited) {
            const text = (data: string | undefined) => Buffer.from(data ?? "", "base64").toString("utf8");
            return {
              exitCode: status.exitcode ?? 128 + (status.signal ?? 0),
              stdout: text(status["out-data"]),
              stderr: text(status["err-data"]),
            };
          }
          await new Promise((resolve) => setTimeout(resolve, EXEC_POLL_MS));
        }
      }),
  };
}

function openSocket(path: string, signal: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const onAbort = () => {
      socket.destroy();
      reject(timeoutError(`connecting to ${path}`));
    };
    signal.addEventListener("abort", onAbort, { once: true });
    socket.once("connect", () => {
      signal.removeEventListener("abort", onAbort);
      socket.removeAllListeners("error");
      socket.on("error", () => {});
      resolve(socket);
    });
    socket.once("error", (error: NodeJS.ErrnoException) => {
      signal.removeEventListener("abort", onAbort);
      reject(
        new UnavailableError(`the guest agent's socket ${path} is unreachable: ${error.code ?? error.message}`, {
          reason: "AGENT_UNREACHABLE",
          cause: error,
        }),
      );
    });
  });
}

/** The next chunk the socket gives; Unavailable when it ends, DeadlineExceeded when `signal` fires first. */
function readChunk(socket: Socket, signal: AbortSignal): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const done = () => {
      socket.off("data", onData);
      socket.off("close", onClose);
      signal.removeEventListener("abort", onAbort);
      socket.pause();
    };
    const onData = (chunk: Buffer) => {
      done();
      resolve(chunk);
    };
    const onClose = () => {
      done();
      reject(new UnavailableError("the guest agent closed the connection", { reason: "AGENT_UNREACHABLE" }));
    };
    const onAbort = () => {
      done();
      reject(timeoutError("waiting for the guest agent's answer"));
    };
    if (signal.aborted) return onAbort();
    if (socket.destroyed || socket.readableEnded) return onClose();
    socket.on("data", onData);
    socket.once("close", onClose);
    signal.addEventListener("abort", onAbort, { once: true });
    socket.resume();
  });
}

async function readUntil(socket: Socket, byte: number, signal: AbortSignal): Promise<{ line: Buffer; rest: Buffer }> {
  let buffered = Buffer.alloc(0);
  for (;;) {
    const at = buffered.indexOf(byte);
    if (at >= 0) return { line: buffered.subarray(0, at), rest: buffered.subarray(at + 1) };
    if (buffered.length > 4096) {
      throw new UnavailableError("the vsock handshake's answer is too long", { reason: "AGENT_UNREACHABLE" });
    }
    buffered = Buffer.concat([buffered, await readChunk(socket, signal)]);
  }
}

/** The most of one answer (or of what precedes the sync's marker) held from a guest: qemu-ga's are a few KiB. */
export const MAX_ANSWER_BYTES = 1024 * 1024;

function tooLarge(): ResourceExhaustedError {
  return new ResourceExhaustedError(`the guest agent sent an answer over ${MAX_ANSWER_BYTES} bytes`, {
    reason: "AGENT_ANSWER_TOO_LARGE",
  });
}

function timeoutError(what: string): DeadlineExceededError {
  return new DeadlineExceededError(`the guest agent did not answer in time (${what})`, { reason: "AGENT_TIMEOUT" });
}
