/**
 * A client for QEMU's machine protocol (QMP) on a VM's QMP socket: the
 * greeting and capabilities handshake, the machine's run state, the power
 * button, and stop/cont (pause and resume). One connection per call: QEMU serves one QMP client at a time, and
 * the orchestrator talks to it rarely (after launch, at stop).
 *
 * QMP is JSON objects, one per line: QEMU greets with `{"QMP": …}`, the
 * client must send `qmp_capabilities` before anything else, and every
 * command is answered by `{"return": …}` or `{"error": {"class", "desc"}}`;
 * asynchronous `{"event": …}` lines may come in between and are skipped.
 *
 * Errors: an `error` answer is a FailedPreconditionError `VMM_API_ERROR` whose
 * message is `qemu <command>: <desc>`, QEMU's own words; a socket that is
 * missing or refuses connections is an UnavailableError `VMM_API_UNREACHABLE`
 * naming the socket; running out of time is a DeadlineExceededError
 * `VMM_API_TIMEOUT`.
 */
import { connect, type Socket } from "node:net";
import { createInterface } from "node:readline";
import { DeadlineExceededError, FailedPreconditionError, UnavailableError } from "@banger/common";

export interface QmpClient {
  /** Waits until the socket accepts a QMP session (QEMU creates it at start), polling. */
  waitForSocket(signal: AbortSignal, timeoutMs: number): Promise<void>;
  /** QEMU's run state, e.g. "running", "paused", "shutdown". */
  status(): Promise<{ readonly running: boolean; readonly status: string }>;
  /** Presses the ACPI power button: the guest shuts down (QEMU then exits, started with -no-reboot). */
  powerdown(): Promise<void>;
  /** Stops the guest's vCPUs (status "paused"); its memory stays. */
  stop(): Promise<void>;
  /** Resumes a paused machine (or one started paused). */
  cont(): Promise<void>;
  /** Starts an outgoing migration to `uri` (e.g. `exec:cat > FILE`); it runs on: see queryMigrate. */
  migrate(uri: string): Promise<void>;
  /** The outgoing migration's status: "active", "completed", "failed" (with QEMU's error), … */
  queryMigrate(): Promise<{ readonly status: string; readonly error: string }>;
  /**
   * A machine started with `-incoming defer` takes the state at `uri` (e.g. `exec:cat FILE`), in one session:
   * `parameters` set first (migrate-set-parameters), migrate-incoming, its end (query-status every 10 ms while
   * "inmigrate"), then the link `linkDown` set down before the guest runs, and cont (a state saved paused
   * comes back paused). Resolves with the run state after; `timeoutMs` bounds it all (a large memory takes time).
   */
  incoming(
    uri: string,
    options: {
      readonly parameters?: Readonly<Record<string, number | boolean | string>>;
      readonly linkDown?: string;
      readonly timeoutMs: number;
      readonly signal: AbortSignal;
    },
  ): Promise<{ readonly running: boolean; readonly status: string }>;
  /**
   * Sets the link of network device (or netdev) `name` up or down: a link down passes no packet either way.
   * Up, the guest is announced too (`announce-self`): its gratuitous ARP updates the host's neighbour table.
   */
  setLink(name: string, up: boolean): Promise<void>;
}

const DEFAULT_TIMEOUT_MS = 5000;
const POLL_INTERVAL_MS = 20;
/** How often an incoming migration's end is asked for, in its session. */
const INCOMING_POLL_MS = 10;
const NOT_YET = new Set(["ENOENT", "ECONNREFUSED"]);

export function createQmpClient(socketPath: string, options: { timeoutMs?: number } = {}): QmpClient {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;

  /** Opens a session, runs `commands` in order, returns the last one's `return` value. */
  function session(commands: readonly { execute: string; arguments?: object }[]): Promise<unknown> {
    return converse(async (call) => {
      let result: unknown;
      for (const command of commands) result = await call(command);
      return result;
    });
  }

  /** Opens a session (greeting, qmp_capabilities), lets `work` call commands in it, closes it. */
  async function converse<T>(
    work: (call: (command: { execute: string; arguments?: object }) => Promise<unknown>) => Promise<T>,
    limitMs = timeoutMs,
  ): Promise<T> {
    const socket = await open(socketPath);
    const lines = createInterface({ input: socket });
    const timer = setTimeout(
      () =>
        socket.destroy(
          new DeadlineExceededError(`QMP on ${socketPath} did not answer in ${limitMs} ms`, {
            reason: "VMM_API_TIMEOUT",
          }),
        ),
      limitMs,
    );
    try {
      const replies = lines[Symbol.asyncIterator]();
      const next = async (): Promise<Record<string, unknown>> => {
        for (;;) {
          const line = await replies.next();
          if (line.done) {
            throw new UnavailableError(`QMP on ${socketPath} closed the connection`, {
              reason: "VMM_API_UNREACHABLE",
            });
          }
          const message = JSON.parse(line.value) as Record<string, unknown>;
          if (!("event" in message)) return message;
        }
      };
      const greeting = await next();
      if (!("QMP" in greeting)) throw qmpError("greeting", `unexpected first message ${JSON.stringify(greeting)}`);
      const call = async (command: { execute: string; arguments?: object }) => {
        socket.write(`${JSON.stringify(command)}\n`);
        const reply = await next();
        const error = reply["error"] as { desc?: string } | undefined;
        if (error) throw qmpError(command.execute, error.desc ?? JSON.stringify(error));
        return reply["return"];
      };
      await call({ execute: "qmp_capabilities" });
      return await work(call);
    } catch (error) {
      throw socket.errored ?? error;
    } finally {
      clearTimeout(timer);
      lines.close();
      socket.destroy();
    }
  }

  return {
    async waitForSocket(signal, waitMs) {
      const deadline = Date.now() + waitMs;
      for (;;) {
        signal.throwIfAborted();
        try {
          (await open(socketPath)).destroy();
          return;
        } catch (error) {
          const code = (error as { cause?: NodeJS.ErrnoException }).cause?.code;
          if (code === undefined || !NOT_YET.has(code) || Date.now() > deadline) throw error;
        }
        await new Promise((resolve) => setTimeout(resolve, POLL_INTERVAL_MS));
      }
    },
    async status() {
      const value = (await session([{ execute: "query-status" }])) as { running?: boolean; status?: string };
      return { running: value.running === true, status: value.status ?? "unknown" };
    },
    async powerdown() {
      await session([{ execute: "system_powerdown" }]);
    },
    async stop() {
      await session([{ execute: "stop" }]);
    },
    async cont() {
      await session([{ execute: "cont" }]);
    },
    async migrate(uri) {
      await session([{ execute: "migrate", arguments: { uri } }]);
    },
    async queryMigrate() {
      const value = (await session([{ execute: "query-migrate" }])) as { status?: string; "error-desc"?: string };
      return { status: value.status ?? "none", error: value["error-desc"] ?? "" };
    },
    incoming(uri, { parameters, linkDown, timeoutMs: limitMs, signal }) {
      return converse(async (call) => {
        const state = async () => (await call({ execute: "query-status" })) as { running?: boolean; status?: string };
        if (parameters) await call({ execute: "migrate-set-parameters", arguments: parameters });
        await call({ execute: "migrate-incoming", arguments: { uri } });
        let now = await state();
        while (now.status === "inmigrate") {
          signal.throwIfAborted();
          await new Promise((resolve) => setTimeout(resolve, INCOMING_POLL_MS));
          now = await state();
        }
        if (linkDown !== undefined) await call({ execute: "set_link", arguments: { name: linkDown, up: false } });
        if (now.status === "paused" || now.status === "postmigrate") {
          await call({ execute: "cont" });
          now = await state();
        }
        return { running: now.running === true, status: now.status ?? "unknown" };
      }, limitMs);
    },
    async setLink(name, up) {
      // Up: QEMU announces the guest as after a migration (virtio-net asks the guest to send gratuitous
      // ARP for its addresses), so the host's neighbour entry for the address names this guest's MAC.
      const announce = { execute: "announce-self", arguments: { initial: 50, max: 550, rounds: 3, step: 100 } };
      await session([{ execute: "set_link", arguments: { name, up } }, ...(up ? [announce] : [])]);
    },
  };
}

function qmpError(command: string, desc: string): FailedPreconditionError {
  return new FailedPreconditionError(`qemu ${command}: ${desc}`, { reason: "VMM_API_ERROR" });
}

function open(socketPath: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    socket.once("connect", () => {
      socket.removeAllListeners("error");
      resolve(socket);
    });
    socket.once("error", (error: NodeJS.ErrnoException) => {
      reject(
        new UnavailableError(`QMP socket ${socketPath} is unreachable: ${error.code ?? error.message}`, {
          reason: "VMM_API_UNREACHABLE",
          cause: error,
        }),
      );
    });
  });
}
