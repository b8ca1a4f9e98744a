/**
 * Why a guest did not come up, said where the user looks: a failure of a
 * stage that ran the VM (launch-vmm … wait-ssh) carries the last lines of the
 * guest console and of the VMM's log (the failed operation keeps them, so they
 * outlive the rollback that removes the VM's runtime directory), and a hint
 * when the console shows a cause this module recognises. The wait for a guest
 * also ends as soon as its VMM exits (a kernel panic reboots with panic=1, and
 * a reboot ends the VMM), instead of running out its timeout.
 */
import { open } from "node:fs/promises";
import { BangerError, FailedPreconditionError } from "@banger/common";
import { withLogTail } from "./operations.js";
import { predecessorOf } from "./vm-observe.js";

/** Stages whose failure may be explained by the VM's own output. */
export const VM_OUTPUT_STAGES: ReadonlySet<string> = new Set([
  "launch-vmm",
  "configure-vmm",
  "start-vmm",
  "wait-agent",
  "wait-ssh",
]);

/** Lines of each log kept with a failure: the console's, and the VMM's own. */
export const CONSOLE_TAIL_LINES = 20;
export const VMM_LOG_TAIL_LINES = 10;
/** A longer line is cut here (a guest decides what its console prints). */
export const TAIL_LINE_CHARS = 240;
/** How much of the end of a log is read: where the lines kept and the hints are looked for. */
const SCAN_BYTES = 64 * 1024;

/**
 * What a console shows, in the words a user needs: the first pattern that
 * matches the end of the console gives the hint. Kept small; each one is
 * tested (readiness.test.ts) against the console lines that produce it.
 */
export const CONSOLE_HINTS: readonly {
  readonly pattern: RegExp;
  readonly hint: (match: RegExpMatchArray) => string;
}[] = [
  {
    // banger's minimal init (guest/init/minimal-init.sh) found no server to start.
    pattern: /banger-init: the image has no \/usr\/sbin\/sshd or \/usr\/sbin\/dropbear/,
    hint: () => "no SSH server in the image (neither /usr/sbin/sshd nor /usr/sbin/dropbear)",
  },
  {
    // banger's initramfs (guest/init/init.sh fail()): its line before this one says why.
    pattern: /banger-init: cannot boot;/,
    hint: (m) => {
      const said = [...(m.input ?? "").slice(0, m.index).matchAll(/banger-init: ([^\n]*)/g)].at(-1)?.[1];
      return `banger's initramfs could not boot the image${said ? `: ${said}` : ""}`;
    },
  },
  {
    pattern: /VFS: Unable to mount root fs/,
    hint: () => "the kernel could not mount the root disk (no initramfs, or its driver for the disk is missing)",
  },
  {
    pattern: /Kernel panic - not syncing: Attempted to kill init!/,
    hint: () => "the image's init exited (the kernel panics when PID 1 ends)",
  },
  {
    pattern: /Kernel panic - not syncing: No working init found/,
    hint: () => "the kernel found no init to run (no /sbin/init in the image, and no initramfs)",
  },
  {
    pattern: /Kernel panic - not syncing: ([^\n]*)/,
    hint: (m) => `the guest kernel panicked: ${(m[1] ?? "").replace(/ \]---$/, "")}`,
  },
];

/** The hint for what a console shows, if one is recognised. */
export function consoleHint(console: string): string | undefined {
  for (const { pattern, hint } of CONSOLE_HINTS) {
    const match = console.match(pattern);
    // Parts of a hint are the guest's words: as printable as the lines kept.
    if (match) return printableLines(hint(match)).join(" ");
  }
  return undefined;
}

/**
 * A guest's text as lines fit for a terminal and a protobuf string: valid
 * UTF-8, terminal escape sequences removed, other control characters shown
 * as `?`, carriage returns dropped, each line cut at TAIL_LINE_CHARS.
 */
export function printableLines(text: string): string[] {
  return (
    text
      // CSI and OSC sequences: colours, cursor moves, window titles.
      .replace(/\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?)/g, "")
      .replace(/\r/g, "")
      .split("\n")
      // Every C0 control but the tab, DEL, and C1.
      .map((line) => line.replace(/[\x00-\x08\x0a-\x1f\x7f-\x9f]/g, "?"))
      .map((line) => (line.length > TAIL_LINE_CHARS ? `${line.slice(0, TAIL_LINE_CHARS - 1)}…` : line))
  );
}

/** The end of a log the relay wrote: the last `bytes` of `path.1` and `path` together, as text. */
export async function readLogEnd(path: string, bytes = SCAN_BYTES): Promise<string> {
  const current = await readEnd(path, bytes);
  const previous = current.fromStart ? await readEnd(predecessorOf(path), bytes - current.data.length) : undefined;
  const text = Buffer.concat(previous ? [previous.data, current.data] : [current.data]);
  // A read that began in the middle of a file begins with a partial line.
  const partial = previous ? !previous.fromStart : !current.fromStart;
  return text.subarray(partial ? text.indexOf(0x0a) + 1 : 0).toString("utf8");
}

/** The last `bytes` of a file (none when it cannot be opened), and whether that is all of it. */
async function readEnd(path: string, bytes: number): Promise<{ data: Buffer; fromStart: boolean }> {
  let file;
  try {
    file = await open(path, "r");
  } catch {
    return { data: Buffer.alloc(0), fromStart: true };
  }
  try {
    const { size } = await file.stat();
    const length = Math.min(size, bytes);
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await file.read(buffer, 0, length, size - length);
    return { data: buffer.subarray(0, bytesRead), fromStart: length === size };
  } finally {
    await file.close();
  }
}

/** The last `count` non-empty-ended lines of `text`, printable, each prefixed with `label: `. */
function labelledTail(text: string, count: number, label: string): string[] {
  const lines = printableLines(text.replace(/\n+$/, ""));
  if (lines.length === 1 && lines[0] === "") return [];
  return lines.slice(-count).map((line) => `${label}: ${line}`);
}

/**
 * Adds to `error` (a failure of `stage`) what the VM printed: the last lines
 * of its console and VMM log (kept by the failed operation, `vmmLogTail`),
 * and a hint in the message when the console shows a recognised cause.
 * Nothing for stages that did not run the VM. Never fails: an unreadable log
 * is an empty one.
 */
export async function explainVmFailure(
  error: unknown,
  logs: { readonly console: string; readonly vmmLog: string },
): Promise<void> {
  const stage = (error as { failedStage?: unknown } | undefined)?.failedStage;
  if (!(error instanceof Error) || typeof stage !== "string" || !VM_OUTPUT_STAGES.has(stage)) return;
  const [console, vmmLog] = await Promise.all([
    readLogEnd(logs.console).catch(() => ""),
    readLogEnd(logs.vmmLog).catch(() => ""),
  ]);
  const tail = [
    ...labelledTail(console, CONSOLE_TAIL_LINES, "console"),
    ...labelledTail(vmmLog, VMM_LOG_TAIL_LINES, "vmm"),
  ];
  if (tail.length > 0) withLogTail(error, tail.join("\n"));
  const hint =
    consoleHint(console) ??
    ((stage === "wait-ssh" || stage === "wait-agent") && console.trim() === "" ? SILENT_GUEST_HINT : undefined);
  // Only errors whose message is what the client sees (banger's own); a peer's ConnectError keeps its own.
  if (hint !== undefined && (error instanceof BangerError || !("rawMessage" in error))) {
    error.message = `${error.message}: ${hint}`;
  }
}

export const SILENT_GUEST_HINT =
  "the guest printed nothing on its console (the kernel did not start, or its console is not console=ttyS0)";

/** How often a wait for the guest asks whether its VMM still runs. */
const VMM_POLL_MS = 1_000;

/**
 * Runs `wait` (given a signal that aborts when it is no longer needed) while
 * the VM's VMM runs: when `vmmRunning` says it is gone, the wait ends with
 * FAILED_PRECONDITION VMM_EXITED. A failed look at the VMM is not an exit.
 */
export async function whileVmmRuns<T>(
  wait: (signal: AbortSignal) => Promise<T>,
  vmmRunning: () => Promise<boolean>,
  signal: AbortSignal,
  pollMs = VMM_POLL_MS,
  /** What the VMM's exit means for this wait. */
  exitedMessage = "the VMM exited before the guest was ready (the guest rebooted or powered off)",
): Promise<T> {
  const done = new AbortController();
  const forward = () => done.abort(signal.reason);
  signal.addEventListener("abort", forward, { once: true });
  let timer: NodeJS.Timeout | undefined;
  const exited = new Promise<never>((_, reject) => {
    const look = async () => {
      const running = await vmmRunning().catch(() => true);
      if (done.signal.aborted) return;
      if (!running) {
        reject(new FailedPreconditionError(exitedMessage, { reason: "VMM_EXITED" }));
        return;
      }
      timer = setTimeout(() => void look(), pollMs);
    };
    timer = setTimeout(() => void look(), pollMs);
  });
  const waiting = wait(done.signal);
  // Whichever loses the race settles later, unobserved.
  exited.catch(() => undefined);
  waiting.catch(() => undefined);
  try {
    return await Promise.race([waiting, exited]);
  } finally {
    done.abort();
    clearTimeout(timer);
    signal.removeEventListener("abort", forward);
  }
}
