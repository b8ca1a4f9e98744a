/**
 * `vm exec -t`: a command in the guest on a pseudo-terminal, with this terminal's keys, size and TERM
 * (ExecService.ExecInteractive). The terminal is raw while it runs: Ctrl-C and the like go to the guest.
 */
import { ExecService, type ExecInteractiveRequestSchema } from "@banger/gen/banger/v1/exec_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Orchestrator } from "../client.js";
import { PassExitCode, UsageError } from "../errors.js";

type Request = MessageInitShape<typeof ExecInteractiveRequestSchema>;

/** Most stdin bytes in one message (the RPC's limit). */
const CHUNK = 64 * 1024;

/** Requests pushed from events, read by the RPC as an async iterable. */
function requestQueue() {
  const queued: Request[] = [];
  let wake: (() => void) | undefined;
  let ended = false;
  return {
    push(request: Request) {
      queued.push(request);
      wake?.();
    },
    end() {
      ended = true;
      wake?.();
    },
    async *[Symbol.asyncIterator](): AsyncGenerator<Request> {
      for (;;) {
        const next = queued.shift();
        if (next !== undefined) {
          yield next;
          continue;
        }
        if (ended) return;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    },
  };
}

/** Runs argv in the VM on a pseudo-terminal; ends with the command's exit code. */
export async function execOnTerminal(o: Orchestrator, vm: string, argv: readonly string[]): Promise<void> {
  const input = process.stdin;
  const output = process.stdout;
  if (!input.isTTY || !output.isTTY) throw new UsageError("vm exec -t needs a terminal (stdin and stdout)");
  const size = () => ({ columns: output.columns || 80, rows: output.rows || 24 });
  const requests = requestQueue();
  requests.push({
    event: {
      case: "command",
      value: { vm, argv: [...argv], tty: true, terminalSize: size(), term: process.env.TERM ?? "" },
    },
  });
  const onData = (chunk: Buffer) => {
    for (let at = 0; at < chunk.length; at += CHUNK) {
      requests.push({ event: { case: "stdin", value: chunk.subarray(at, at + CHUNK) } });
    }
  };
  const onEnd = () => {
    requests.push({ event: { case: "closeStdin", value: true } });
    requests.end();
  };
  const onResize = () => requests.push({ event: { case: "resize", value: size() } });
  input.setRawMode(true);
  input.on("data", onData);
  input.once("end", onEnd);
  output.on("resize", onResize);
  let code = 0;
  try {
    const stream = o.client(ExecService).execInteractive(requests, o.callOptions());
    for await (const { event } of stream) {
      if (event.case === "stdout") output.write(event.value);
      else if (event.case === "stderr") process.stderr.write(event.value);
      else if (event.case === "exit") {
        code = event.value.code >= 0 ? event.value.code : 128 + (event.value.signal === "KILL" ? 9 : 15);
      }
    }
  } finally {
    requests.end();
    output.off("resize", onResize);
    input.off("data", onData);
    input.off("end", onEnd);
    input.setRawMode(false);
    input.pause();
  }
  if (code !== 0) throw new PassExitCode(code);
}
