import {
  OperationSchema,
  OperationService,
  OperationState,
  type Operation,
} from "@banger/gen/banger/v1/operation_pb.js";
import { toJson } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Option, type Command } from "commander";
import { connectOrchestrator, type Orchestrator } from "../client.js";
import type { GlobalOptions } from "../context.js";
import { PassExitCode, ReportedFailure } from "../errors.js";
import { STATE_WORD, createStagePrinter, isEnded } from "../render/operation.js";
import { createProgressRenderer } from "../render/progress.js";
import { renderTable } from "../render/table.js";

/** `op list`, `show`, `watch`, `cancel`. */
export function registerOpCommands(op: Command, globals: () => GlobalOptions): void {
  op.command("list")
    .description("recent operations, newest first")
    .option("--target <name>", "only operations on this VM, image or kernel")
    .option("--active", "only operations that have not ended")
    .option("--limit <n>", "at most this many (1-1000)", "50")
    .option("--json", "print JSON")
    .action(async (opts: { target?: string; active?: boolean; limit: string; json?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const { operations } = await o
          .client(OperationService)
          .listOperations(
            { target: opts.target ?? "", activeOnly: opts.active === true, limit: Number(opts.limit) },
            o.callOptions(),
          );
        if (opts.json) return printJson(operations);
        const rows = operations.map((x) => [x.id, x.target, STATE_WORD[x.state], created(x)]);
        process.stdout.write(renderTable(["OP", "TARGET", "STATE", "STARTED"], rows));
      });
    });
  op.command("show")
    .argument("<op-id>", "the operation's id (op-…)")
    .description("one operation: its stages with times, its result or error")
    .option("--json", "print JSON")
    .action(async (id: string, opts: { json?: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const { operation } = await o.client(OperationService).getOperation({ id }, o.callOptions());
        if (!operation) return;
        if (opts.json) {
          process.stdout.write(JSON.stringify(toJson(OperationSchema, operation), null, 2) + "\n");
          return;
        }
        process.stdout.write(`${operation.id}  ${operation.target}  ${STATE_WORD[operation.state]}\n`);
        createStagePrinter((l) => process.stdout.write(l))(operation);
        if (operation.error) {
          process.stdout.write(`error: ${operation.error.message} (${operation.error.reason})\n`);
          if (operation.error.vmmLogTail) process.stdout.write(lastOutput(operation.error.vmmLogTail));
        }
      });
    });
  op.command("watch")
    .argument("<op-id>", "the operation's id (op-…)")
    .description(
      "follow an operation until it ends; exits 1 if it fails. Ctrl-C stops watching, not the operation " +
        "(to stop it: banger op cancel)",
    )
    .action(async (id: string) => {
      await withOrchestrator(globals(), (o) => watchToEnd(o, id, { interrupt: "stop-watching" }));
    });
  op.command("cancel")
    .argument("<op-id>", "the operation's id (op-…)")
    .description(
      "cancel a running operation: it stops at its next safe point and unwinds what it made (a create removes " +
        "its tap, disks, VMM and row); shows the unwind to its end, exits 1 unless it ends cancelled " +
        "(--no-wait: returns at once). Cancelling an ended operation changes nothing",
    )
    .option("--no-wait", "ask and return at once")
    .action(async (id: string, opts: { wait: boolean }) => {
      await withOrchestrator(globals(), async (o) => {
        const { operation } = await o.client(OperationService).cancelOperation({ id }, o.callOptions());
        if (!operation) return;
        if (isEnded(operation) && !operation.cancelRequested) {
          process.stderr.write(`${id} had already ended: ${STATE_WORD[operation.state]}\n`);
          return;
        }
        process.stderr.write(`cancelling ${id} (${operation.target})\n`);
        if (!opts.wait) return;
        const done = await watchToEnd(o, id, { interrupt: "stop-watching", expectCancel: true });
        if (done.state !== OperationState.CANCELLED) {
          process.stderr.write(`banger: ${id} ${STATE_WORD[done.state]} before it could stop\n`);
          throw new ReportedFailure(`${id} was not cancelled`);
        }
        process.stderr.write(`${id} cancelled; what it had made was unwound\n`);
      });
    });
}

/**
 * `--detach`, for the commands that start an operation: print its id and return at once (as --no-wait,
 * which it sets).
 */
export function detachOption(): Option {
  return new Option("--detach", "print the operation id and return at once (as --no-wait)").implies({ wait: false });
}

export interface WatchOptions {
  /**
   * What Ctrl-C does. "cancel" (the commands that started the operation): the first cancels it and the watch
   * goes on through its unwind to its end (exit code 130 once it ended cancelled); the second stops watching
   * (exit code 130, the operation goes on). "stop-watching" (`op watch`): Ctrl-C ends the command at once.
   */
  readonly interrupt?: "cancel" | "stop-watching";
  /** The operation was cancelled on purpose (`op cancel`): ending cancelled is success. */
  readonly expectCancel?: boolean;
}

/** Follows an operation, printing its stages; throws ReportedFailure when it does not succeed. */
export async function watchToEnd(o: Orchestrator, id: string, options: WatchOptions = {}): Promise<Operation> {
  const renderer = createProgressRenderer({
    write: (text) => process.stderr.write(text),
    isTTY: process.stderr.isTTY,
    columns: process.stderr.columns || 80,
  });
  const detach = new AbortController();
  let interrupts = 0;
  let cancelling: Promise<void> | undefined;
  const onInterrupt = () => {
    interrupts += 1;
    if (interrupts > 1) return detach.abort();
    renderer.say(`cancelling ${id}: it unwinds what it made (Ctrl-C again to stop watching; it goes on)\n`);
    cancelling = o
      .client(OperationService)
      .cancelOperation({ id }, o.callOptions())
      .then(
        () => undefined,
        (error: unknown) => {
          renderer.say(`banger: could not cancel ${id}: ${error instanceof Error ? error.message : String(error)}\n`);
        },
      );
  };
  if (options.interrupt !== "stop-watching") {
    process.on("SIGINT", onInterrupt);
    // Ctrl-C while bangerd was still answering the call that started this operation: cancel it now.
    if (o.interruptedWhileStarting()) onInterrupt();
  }
  let last: Operation | undefined;
  try {
    const stream = o.client(OperationService).watchOperation({ id }, o.callOptions({ signal: detach.signal }));
    for await (const { operation } of stream) {
      if (!operation) continue;
      last = operation;
      renderer.update(operation);
    }
  } catch (error) {
    if (!detach.signal.aborted) throw error;
  } finally {
    process.off("SIGINT", onInterrupt);
    renderer.finish();
  }
  await cancelling; // its answer (or its error) comes before the last line
  if (detach.signal.aborted) {
    process.stderr.write(
      `banger: stopped watching ${id}; it goes on${interrupts > 0 ? " (cancel requested)" : ""}: ` +
        `banger op watch ${id}\n`,
    );
    throw new PassExitCode(130);
  }
  if (!last || !isEnded(last)) throw new Error(`lost the stream of ${id} before it ended; see 'banger op show ${id}'`);
  if (last.state === OperationState.CANCELLED && options.expectCancel) return last;
  if (last.state === OperationState.CANCELLED && interrupts > 0) {
    const where = last.error?.stage ? ` at ${last.error.stage}` : "";
    process.stderr.write(`banger: cancelled${where}; what it had made was unwound (${last.id})\n`);
    throw new PassExitCode(130);
  }
  if (last.error && STATE_WORD[last.state] !== "succeeded") {
    const where = last.error.stage ? ` at ${last.error.stage}` : "";
    // Before the error, so that the error stays the last line.
    if (last.error.vmmLogTail) process.stderr.write(lastOutput(last.error.vmmLogTail));
    process.stderr.write(`banger: ${STATE_WORD[last.state]}${where}: ${last.error.message} (${last.id})\n`);
    throw new ReportedFailure(last.error.message);
  }
  return last;
}

/**
 * Says on stderr that an operation started (`<what> (<op id>)`); with --no-wait prints its id on
 * stdout and returns undefined, else follows it to its end (see watchToEnd) and returns it.
 */
export async function announceAndWatch(
  o: Orchestrator,
  operation: Operation,
  what: string,
  wait: boolean,
): Promise<Operation | undefined> {
  process.stderr.write(`${what} (${operation.id})\n`);
  // --detach, but Ctrl-C came before bangerd answered: the user asked to stop it, so it is cancelled and followed.
  if (!wait && !o.interruptedWhileStarting()) {
    process.stdout.write(`${operation.id}\n`);
    return undefined;
  }
  return watchToEnd(o, operation.id);
}

/** A failed operation's record of what the VM printed last (`console: …`, `vmm: …` lines), indented. */
function lastOutput(tail: string): string {
  const lines = tail.split("\n").map((line) => `  ${line}\n`);
  return `the VM's last output (console and VMM log):\n${lines.join("")}`;
}

export async function withOrchestrator<T>(globals: GlobalOptions, work: (o: Orchestrator) => Promise<T>): Promise<T> {
  const orchestrator = connectOrchestrator(globals);
  try {
    return await work(orchestrator);
  } finally {
    orchestrator.close();
  }
}

function printJson(operations: readonly Operation[]): void {
  process.stdout.write(
    JSON.stringify(
      operations.map((x) => toJson(OperationSchema, x)),
      null,
      2,
    ) + "\n",
  );
}

function created(op: Operation): string {
  return op.createTime ? timestampDate(op.createTime).toISOString().replace("T", " ").slice(0, 19) : "";
}
