import { InvalidArgumentError, eventStream, implementService } from "@banger/common";
import { ExecService, type Command, type ExecResponseSchema } from "@banger/gen/banger/v1/exec_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  execInGuest,
  type ExitStatus,
  type GuestInput,
  type GuestTarget,
  type Interactive,
} from "../core/guest-exec.js";
import { validVmName, type VmService } from "../core/vms.js";

type Response = MessageInitShape<typeof ExecResponseSchema>;

const MAX_STDIN = 4 * 1024 * 1024;
const MAX_CHUNK = 64 * 1024;

const commandFirst = () =>
  new InvalidArgumentError("the first message must be the command, and only the first", { reason: "COMMAND_FIRST" });

/** Runs `command` in the guest and yields its output as it comes, then its exit status. */
async function* streamed(
  target: GuestTarget,
  command: Command | undefined,
  stdin: Uint8Array,
  signal: AbortSignal,
  interactive?: Interactive,
): AsyncGenerator<Response> {
  const t0 = performance.now();
  const timeout = command?.timeout;
  const exit = yield* eventStream<Response, ExitStatus>((emit) => {
    const split = (chunk: Buffer, kind: "stdout" | "stderr") => {
      for (let i = 0; i < chunk.length; i += MAX_CHUNK) {
        emit({ event: { case: kind, value: chunk.subarray(i, i + MAX_CHUNK) } });
      }
    };
    return execInGuest(
      target,
      {
        argv: command?.argv ?? [],
        env: command?.env ?? [],
        workingDir: command?.workingDir ?? "",
        user: command?.user ?? "",
        stdin,
        timeoutMs: timeout ? Number(timeout.seconds) * 1000 + Math.round(timeout.nanos / 1e6) : undefined,
      },
      { onStdout: (chunk) => split(chunk, "stdout"), onStderr: (chunk) => split(chunk, "stderr") },
      signal,
      interactive,
    );
  });
  const ms = performance.now() - t0;
  yield {
    event: {
      case: "exit",
      value: {
        code: exit.code,
        signal: exit.signal,
        timedOut: exit.timedOut,
        elapsed: { seconds: BigInt(Math.floor(ms / 1000)), nanos: Math.round((ms % 1000) * 1e6) },
      },
    },
  };
}

/** `banger.v1.ExecService`: a command in a running guest over SSH, its output streamed as it comes. */
export function createExecService(vms: VmService): ServiceImpl<typeof ExecService> {
  return implementService(ExecService, {
    async *exec(req, ctx) {
      const target = await vms.guestTarget(validVmName(req.command?.vm ?? ""));
      if (req.stdin.length > MAX_STDIN) {
        throw new InvalidArgumentError(`stdin is limited to ${MAX_STDIN} bytes, got ${req.stdin.length}`, {
          reason: "STDIN_TOO_LARGE",
        });
      }
      yield* streamed(target, req.command, req.stdin, ctx.signal);
    },

    async *execInteractive(requests, ctx) {
      const iterator = requests[Symbol.asyncIterator]();
      const first = await iterator.next();
      if (first.done === true || first.value.event.case !== "command") throw commandFirst();
      const command = first.value.event.value;
      const target = await vms.guestTarget(validVmName(command.vm));
      async function* input(): AsyncGenerator<GuestInput> {
        for (;;) {
          const next = await iterator.next();
          if (next.done === true) return;
          const event = next.value.event;
          if (event.case === "stdin") yield { kind: "stdin", data: event.value };
          else if (event.case === "resize")
            yield { kind: "resize", columns: event.value.columns, rows: event.value.rows };
          else if (event.case === "closeStdin") return;
          else if (event.case === "command") throw commandFirst();
        }
      }
      const size = command.terminalSize;
      const tty = command.tty
        ? { columns: size?.columns || 80, rows: size?.rows || 24, term: command.term || "xterm-256color" }
        : undefined;
      const output = streamed(target, command, new Uint8Array(), ctx.signal, {
        input: input(),
        ...(tty ? { tty } : {}),
      });
      // The same events as Exec's, in ExecInteractiveResponse.
      for await (const response of output) if (response.event) yield { event: response.event };
    },
  });
}
