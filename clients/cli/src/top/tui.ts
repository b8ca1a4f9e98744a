/**
 * `banger top`'s full screen, drawn by ink (React for terminals). What it shows comes from render/top-view.ts
 * as lines; this file only keeps the state (data, selection, a question being asked), maps keys to calls and
 * draws. Refreshes: every `intervalMs` (ListVms, VmStats of the running VMs, GetCapacity, ListOperations),
 * and live between refreshes from WatchOperation on each operation that runs.
 *
 * Logs, exec and ssh leave the screen: the TUI unmounts, the CLI runs its own `banger vm logs|exec|ssh`
 * on the terminal, and the screen comes back when it ends.
 */
import { OperationService, type Operation } from "@banger/gen/banger/v1/operation_pb.js";
import { VmService } from "@banger/gen/banger/v1/vm_pb.js";
import { runAttached } from "@banger/common/host-runner";
import { OP_ID_HEADER, mintOpId } from "@banger/common/op-id";
import { ConnectError } from "@connectrpc/connect";
import { openSync } from "node:fs";
import { ReadStream } from "node:tty";
import { Box, Text, render, useApp, useInput, useStdout } from "ink";
import { createElement as h, useEffect, useRef, useState } from "react";
import { connectOrchestrator, type Orchestrator } from "../client.js";
import type { GlobalOptions } from "../context.js";
import { isEnded } from "../render/operation.js";
import { screenLines, type TopData } from "../render/top-view.js";
import { gatherTop } from "./gather.js";

const ALT_SCREEN_ON = "\x1b[?1049h";
const ALT_SCREEN_OFF = "\x1b[?1049l";

/** How the screen was left: quit top, run a command and come back, or (a Ctrl-C as it was leaving) just come back. */
type Leave =
  | { readonly kind: "quit" }
  | { readonly kind: "back" }
  | { readonly kind: "run"; readonly args: string[]; readonly pause: boolean };

/**
 * The data the screen shows, kept up to date: refreshed every `intervalMs`, and each running operation
 * watched (WatchOperation) so its stages move between refreshes.
 */
class TopFeed {
  data: TopData = { vms: [], stats: new Map(), capacity: undefined, operations: [] };
  error = "";
  private readonly listeners = new Set<() => void>();
  private readonly watched = new Map<string, AbortController>();
  private readonly stop = new AbortController();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly o: Orchestrator,
    private readonly intervalMs: number,
  ) {}

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  start(): void {
    void this.refresh();
  }

  /** Refreshes now (after a key's call) and then every interval again. */
  async refresh(): Promise<void> {
    clearTimeout(this.timer);
    try {
      this.data = await gatherTop(this.o, this.stop.signal);
      this.error = "";
      for (const op of this.data.operations) if (!isEnded(op)) this.watch(op.id);
    } catch (error) {
      if (this.stop.signal.aborted) return;
      this.error = `refresh failed: ${error instanceof ConnectError ? error.rawMessage : String(error)}`;
    }
    this.changed();
    if (!this.stop.signal.aborted) this.timer = setTimeout(() => void this.refresh(), this.intervalMs);
  }

  intervalSeconds(): number {
    return this.intervalMs / 1000;
  }

  close(): void {
    clearTimeout(this.timer);
    this.stop.abort();
  }

  private changed(): void {
    for (const listener of this.listeners) listener();
  }

  /** Follows one operation to its end, replacing it in the list at each update. */
  private watch(id: string): void {
    if (this.watched.has(id)) return;
    const controller = new AbortController();
    this.watched.set(id, controller);
    const signal = AbortSignal.any([controller.signal, this.stop.signal]);
    void (async () => {
      try {
        const stream = this.o.client(OperationService).watchOperation({ id }, this.o.callOptions({ signal }));
        for await (const { operation } of stream) if (operation) this.update(operation);
      } catch {
        // The next refresh shows where it is.
      } finally {
        this.watched.delete(id);
        // It ended: the VM's state changed with it.
        if (!this.stop.signal.aborted) void this.refresh();
      }
    })();
  }

  private update(op: Operation): void {
    const operations = this.data.operations.map((known) => (known.id === op.id ? op : known));
    this.data = { ...this.data, operations };
    this.changed();
  }
}

interface AppProps {
  readonly feed: TopFeed;
  readonly o: Orchestrator;
  readonly initialSelected: string;
  readonly leave: (how: Leave, selected: string) => void;
}

/**
 * Call options with an op id of its own: the orchestrator adopts the caller's op id as the operation's id,
 * and top, unlike a one-shot command, starts many operations (the command's id would collide).
 */
const ownOpId = () => ({ headers: { [OP_ID_HEADER]: mintOpId() } });

/** A question at the bottom: y/n for a delete, a command line for exec. */
type Question =
  { readonly kind: "delete"; readonly vm: string } | { readonly kind: "exec"; readonly vm: string; text: string };

/**
 * What the keys change. Kept in a ref, not in React state: keys typed faster than a redraw (`j` then `x`)
 * must each see what the one before did, not the state of the last render.
 */
interface UiState {
  selectedName: string;
  status: string;
  question: Question | undefined;
}

function TopApp({ feed, o, initialSelected, leave }: AppProps) {
  const { exit } = useApp();
  const { stdout } = useStdout();
  const [, setTick] = useState(0);
  const ui = useRef<UiState>({ selectedName: initialSelected, status: "", question: undefined }).current;
  const [size, setSize] = useState({ cols: stdout.columns || 80, rows: stdout.rows || 24 });
  const redraw = () => setTick((n) => n + 1);

  useEffect(() => feed.subscribe(redraw), [feed]);
  useEffect(() => {
    const onResize = () => setSize({ cols: stdout.columns || 80, rows: stdout.rows || 24 });
    stdout.on("resize", onResize);
    return () => void stdout.off("resize", onResize);
  }, [stdout]);

  /** The selected VM's index: the one named, else the first (it was deleted, or nothing was chosen yet). */
  const selectedIndex = () =>
    Math.max(
      0,
      feed.data.vms.findIndex((vm) => vm.name === ui.selectedName),
    );
  const set = (change: Partial<UiState>) => {
    Object.assign(ui, change);
    redraw();
  };

  const call = (what: string, action: () => Promise<{ operation?: Operation | undefined }>) => {
    set({ status: `${what}…` });
    action()
      .then(({ operation }) => {
        set({ status: operation ? `${what} (${operation.id})` : what });
        void feed.refresh();
      })
      .catch((error: unknown) =>
        set({ status: `${what} failed: ${error instanceof ConnectError ? error.rawMessage : String(error)}` }),
      );
  };
  const leaving = useRef(false);
  const selectedName = () => feed.data.vms[selectedIndex()]?.name ?? "";
  const quit = (how: Leave) => {
    leaving.current = true;
    leave(how, selectedName());
    exit();
  };

  useInput((input, key) => {
    // Keys that come while the screen leaves: a Ctrl-C meant for the command it leaves for cancels that command.
    if (leaving.current) {
      if (key.ctrl && input === "c") leave({ kind: "back" }, selectedName());
      return;
    }
    const question = ui.question;
    if (question?.kind === "delete") {
      ui.question = undefined;
      if (input === "y" || input === "Y") {
        call(`deleting ${question.vm}`, () => o.client(VmService).deleteVm({ name: question.vm }, ownOpId()));
      } else {
        set({ status: `kept ${question.vm}` });
      }
      return;
    }
    if (question?.kind === "exec") {
      if (key.escape) {
        set({ question: undefined, status: "" });
      } else if (key.return) {
        set({ question: undefined });
        // A command runs and its output stays until Enter; nothing typed opens a shell on the terminal.
        if (question.text.trim() !== "") {
          quit({ kind: "run", args: ["vm", "exec", question.vm, "--", "sh", "-c", question.text], pause: true });
        } else {
          quit({ kind: "run", args: ["vm", "exec", "-t", question.vm, "--", "sh", "-l"], pause: false });
        }
      } else if (key.backspace || key.delete) {
        set({ question: { ...question, text: question.text.slice(0, -1) } });
      } else if (!key.ctrl && !key.meta && input) {
        set({ question: { ...question, text: question.text + input } });
      }
      return;
    }
    const vms = feed.data.vms;
    const selected = selectedIndex();
    if (input === "q" || key.escape || (key.ctrl && input === "c")) return quit({ kind: "quit" });
    if (key.upArrow || input === "k") return set({ selectedName: vms[Math.max(0, selected - 1)]?.name ?? "" });
    if (key.downArrow || input === "j") {
      return set({ selectedName: vms[Math.min(vms.length - 1, selected + 1)]?.name ?? "" });
    }
    const name = vms[selected]?.name;
    if (name === undefined) return;
    const client = o.client(VmService);
    switch (input) {
      case "s":
        return call(`starting ${name}`, () => client.startVm({ name }, ownOpId()));
      case "x":
        return call(`stopping ${name}`, () => client.stopVm({ name }, ownOpId()));
      case "r":
        return call(`restarting ${name}`, () => client.restartVm({ name }, ownOpId()));
      case "d":
        return set({ question: { kind: "delete", vm: name } });
      case "l":
        return quit({ kind: "run", args: ["vm", "logs", name, "--tail", "200", "--follow"], pause: false });
      case "e":
        return set({ question: { kind: "exec", vm: name, text: "" } });
      case "c":
        return quit({ kind: "run", args: ["vm", "ssh", name], pause: false });
    }
  });

  const { question } = ui;
  const vms = feed.data.vms;
  const selected = selectedIndex();
  const statusLine =
    question?.kind === "exec"
      ? `exec in ${question.vm} (Enter runs; nothing: a shell; Esc cancels): ${question.text}_`
      : question?.kind === "delete"
        ? `delete ${question.vm} and its disks? y/n`
        : feed.error || ui.status;
  const lines = screenLines(
    feed.data,
    {
      selected,
      status: statusLine,
      title: `banger top — ${vms.length} VMs, refresh ${feed.intervalSeconds()}s — ${new Date().toTimeString().slice(0, 8)}`,
    },
    size.cols,
    size.rows,
    new Date(),
  );
  return h(
    Box,
    { flexDirection: "column", width: size.cols, height: size.rows },
    ...lines.map((line, i) =>
      h(
        Text,
        { key: i, inverse: line.selected === true, dimColor: line.dim === true, wrap: "truncate" },
        line.text || " ",
      ),
    ),
  );
}

/** Runs the screen until `q`; logs, exec and ssh leave it for the CLI's own command and come back. */
export async function runTopTui(globals: GlobalOptions, intervalMs: number): Promise<void> {
  const o = connectOrchestrator(globals);
  const feed = new TopFeed(o, intervalMs);
  let selected = "";
  feed.start();
  try {
    for (;;) {
      let how: Leave = { kind: "quit" };
      process.stdout.write(ALT_SCREEN_ON);
      // The screen's keys come through a descriptor of its own on the terminal, closed when the screen
      // leaves: ink stops listening but node's stdin would go on reading the terminal, taking keys (the
      // Enter after an exec) from the command that runs there meanwhile.
      const keys = new ReadStream(openSync("/proc/self/fd/0", "r"));
      const instance = render(
        h(TopApp, {
          feed,
          o,
          initialSelected: selected,
          leave: (chosen: Leave, vm: string) => {
            how = chosen;
            selected = vm;
          },
        }),
        { exitOnCtrlC: false, stdin: keys },
      );
      // A Ctrl-C from here until the command has started (the terminal leaves raw mode meanwhile, so it comes as
      // a signal) cancels the command: it was meant for it.
      let interrupted = false;
      const onInterrupt = () => {
        interrupted = true;
      };
      try {
        await instance.waitUntilExit();
        process.on("SIGINT", onInterrupt);
      } finally {
        instance.cleanup();
        keys.destroy();
      }
      process.stdout.write(ALT_SCREEN_OFF);
      const chosen = how as Leave;
      if (chosen.kind === "quit") return;
      // One turn of the event loop for a Ctrl-C already sent to arrive.
      await new Promise((resolve) => setImmediate(resolve));
      process.off("SIGINT", onInterrupt);
      if (chosen.kind === "back" || interrupted) continue;
      await runCli(globals, chosen.args, chosen.pause);
      void feed.refresh();
    }
  } finally {
    feed.close();
    o.close();
  }
}

/**
 * After the command: when `pause` is 1 (exec), or it failed (not by a signal: the user's Ctrl-C on
 * `logs -f`), wait for Enter so that its output can be read before the screen comes back. Done by the
 * shell that runs the command, on the terminal as it left it: top's own stdin stays ink's alone.
 */
const AFTER_COMMAND =
  '"$@"; code=$?; if [ "$0" = 1 ] || { [ $code -ne 0 ] && [ $code -lt 128 ]; }; then ' +
  "printf '\\n[exit %d] press Enter to go back to banger top' $code; read -r _; fi";

/**
 * Runs `banger <args>` (this same CLI, same socket) on the terminal. Ctrl-C goes to it (ending `logs -f`),
 * not to top; see AFTER_COMMAND for when it waits for Enter.
 */
async function runCli(globals: GlobalOptions, args: readonly string[], pause: boolean): Promise<void> {
  const ignore = () => undefined;
  process.on("SIGINT", ignore);
  try {
    const socket = globals.socket ? ["--socket", globals.socket] : [];
    const script = process.argv[1] ?? "banger";
    const banger = [process.execPath, script, ...socket, ...args];
    await runAttached(["/bin/sh", "-c", AFTER_COMMAND, pause ? "1" : "0", ...banger], { env: process.env });
  } finally {
    process.off("SIGINT", ignore);
  }
}
