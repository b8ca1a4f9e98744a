import { once } from "node:events";
import { createWriteStream } from "node:fs";
import { rename, rm } from "node:fs/promises";
import { resolve } from "node:path";
import { OperationSchema } from "@banger/gen/banger/v1/operation_pb.js";
import { ExportFormat, WorkspaceMode, WorkspaceService } from "@banger/gen/banger/v1/workspace_pb.js";
import { toJson } from "@bufbuild/protobuf";
import type { Command } from "commander";
import type { GlobalOptions } from "../context.js";
import { UsageError } from "../errors.js";
import { detachOption, watchToEnd, withOrchestrator } from "./op.js";

const GUEST_NEEDS = `
How it works: bangerd reads the repository on this host (it must be inside
your home) and streams it to the guest over SSH as a tar; the guest only
unpacks it, so it needs sh, tar, mkdir, mv and rm (busybox's are enough) and
not git. An export streams the guest's tree back and makes the patch on this
host, against what the prepare copied. git is needed in the guest only to use
the repository there (the history of --mode git, or git status in either mode).
Submodules and repositories nested inside the repository are refused.`;

const MODES: Record<string, WorkspaceMode> = { copy: WorkspaceMode.COPY, git: WorkspaceMode.GIT };
const FORMATS: Record<string, ExportFormat> = { patch: ExportFormat.PATCH, tar: ExportFormat.TAR };

function choice<T>(table: Record<string, T>, value: string, flag: string): T {
  const found = Object.hasOwn(table, value) ? table[value] : undefined;
  if (found === undefined) throw new UsageError(`${flag} takes ${Object.keys(table).join(" or ")}, got ${value}`);
  return found;
}

/** `workspace prepare` and `export`. */
export function registerWorkspaceCommands(workspace: Command, globals: () => GlobalOptions): void {
  workspace.addHelpText("after", GUEST_NEEDS);
  workspace
    .command("prepare")
    .argument("<vm>", "a running VM")
    .description(
      "copy a git repository into a running VM over SSH; shows each stage and the bytes sent, exits 1 if it fails " +
        "(the guest's previous copy at that path is then left as it was)",
    )
    .option(
      "--path <dir>",
      "the repository: its top level or any directory in it, inside your home (default: the current directory)",
    )
    .option(
      "--guest-path <path>",
      "absolute guest directory to copy into, replaced if it exists; not a top-level directory, /root itself or " +
        "/root/.ssh (default: /root/<repository directory name>)",
    )
    .option(
      "--mode <mode>",
      "copy: tracked files plus untracked files that are not ignored, as they are now, with a fresh one-commit " +
        "git repository of them; git: the same files plus the repository's .git (history, index, stash)",
      "copy",
    )
    .option("--no-wait", "print the operation id and return at once")
    .addOption(detachOption())
    .option("--json", "print the finished operation as JSON")
    .addHelpText("after", GUEST_NEEDS)
    .action(
      async (vm: string, opts: { path?: string; guestPath?: string; mode: string; wait: boolean; json?: boolean }) => {
        const request = {
          vm,
          hostPath: resolve(opts.path ?? process.cwd()),
          guestPath: opts.guestPath ?? "",
          mode: choice(MODES, opts.mode, "--mode"),
        };
        await withOrchestrator(globals(), async (o) => {
          const { operation } = await o.client(WorkspaceService).prepareWorkspace(request, o.callOptions());
          if (!operation) return;
          process.stderr.write(`preparing ${request.hostPath} in ${vm} (${operation.id})\n`);
          if (!opts.wait) {
            process.stdout.write(`${operation.id}\n`);
            return;
          }
          const done = await watchToEnd(o, operation.id);
          if (opts.json) {
            process.stdout.write(JSON.stringify(toJson(OperationSchema, done), null, 2) + "\n");
            return;
          }
          const upload = done.stages.find((stage) => stage.name === "upload");
          process.stdout.write(`prepared ${vm}: ${upload?.message ?? ""}\n`);
        });
      },
    );
  workspace
    .command("export")
    .argument("<vm>", "a running VM with a prepared workspace")
    .description(
      "bring the guest's changes back: a patch of everything that changed since the prepare (for 'git apply'; " +
        "binary changes included, files the repository ignores left out; empty when nothing changed), " +
        "or a tar of the whole workspace as it is in the guest (.git left out)",
    )
    .option("--guest-path <path>", "the workspace (default: the one last prepared on this VM)")
    .option("--format <format>", "patch or tar", "patch")
    .option("--out <file>", "write it to this file (replaced once complete) instead of standard output")
    .option("--json", "with --out: print what was written as JSON")
    .addHelpText("after", GUEST_NEEDS)
    .action(async (vm: string, opts: { guestPath?: string; format: string; out?: string; json?: boolean }) => {
      const format = choice(FORMATS, opts.format, "--format");
      if (opts.json && opts.out === undefined)
        throw new UsageError("--json needs --out (the export itself goes to stdout)");
      if (opts.out === undefined && format === ExportFormat.TAR && process.stdout.isTTY) {
        throw new UsageError("not writing a tar to a terminal: give --out FILE or redirect the output");
      }
      const out = opts.out === undefined ? undefined : resolve(opts.out);
      const partial = out === undefined ? undefined : `${out}.partial-${process.pid}`;
      const sink = partial === undefined ? process.stdout : createWriteStream(partial, { mode: 0o644 });
      let bytes = 0;
      try {
        await withOrchestrator(globals(), async (o) => {
          const stream = o
            .client(WorkspaceService)
            .exportWorkspace({ vm, guestPath: opts.guestPath ?? "", format }, o.callOptions());
          for await (const { data } of stream) {
            bytes += data.length;
            if (!sink.write(data)) await once(sink, "drain");
          }
        });
        if (partial !== undefined && out !== undefined) {
          const file = sink as ReturnType<typeof createWriteStream>;
          await new Promise<void>((done, fail) => file.end((error?: Error | null) => (error ? fail(error) : done())));
          await rename(partial, out);
        }
      } catch (error) {
        if (partial !== undefined) {
          (sink as ReturnType<typeof createWriteStream>).destroy();
          await rm(partial, { force: true });
        }
        throw error;
      }
      const what = format === ExportFormat.TAR ? "tar" : "patch";
      if (opts.json) {
        process.stdout.write(
          JSON.stringify(
            { vm, guestPath: opts.guestPath ?? "", format: what, out, bytes, changes: bytes > 0 },
            null,
            2,
          ) + "\n",
        );
      } else if (format === ExportFormat.PATCH && bytes === 0) {
        process.stderr.write(`no changes in ${vm} since the prepare${out ? ` (${out} is empty)` : ""}\n`);
      } else if (out !== undefined) {
        process.stderr.write(`wrote the ${what} (${bytes} bytes) to ${out}\n`);
      }
    });
}
