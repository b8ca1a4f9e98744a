import { InvalidArgumentError, eventStream, implementService } from "@banger/common";
import { ExecService, type ExecResponseSchema } from "@banger/gen/banger/v1/exec_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { execInGuest } from "../core/guest-exec.js";
import { validVmName, type VmService } from "../core/vms.js";

type Response = MessageInitShape<typeof ExecResponseSchema>;

const MAX_STDIN = 4 * 1024 * 1024;
const MAX_CHUNK = 64 * 1024;

/** `banger.v1.ExecService`: a command in a running guest over SSH, its output streamed as it comes. */
export function createExecService(vms: VmService): ServiceImpl<typeof ExecService> {
  return implementService(ExecService, {
    async *exec(req, ctx) {
      const command = req.command;
      const target = await vms.guestTarget(validVmName(command?.vm ?? ""));
      if (req.stdin.length > MAX_STDIN) {
        throw new InvalidArgumentError(`stdin is limited to ${MAX_STDIN} bytes, got ${req.stdin.length}`, {
          reason: "STDIN_TOO_LARGE",
        });
      }
      const t0 = performance.now();
      const timeout = command?.timeout;
      const exit = yield* eventStream<Response, Awaited<ReturnType<typeof execInGuest>>>((emit) => {
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
            stdin: req.stdin,
            timeoutMs: timeout ? Number(timeout.seconds) * 1000 + Math.round(timeout.nanos / 1e6) : undefined,
          },
          { onStdout: (chunk) => split(chunk, "stdout"), onStderr: (chunk) => split(chunk, "stderr") },
          ctx.signal,
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
    },
  });
}
