/**
 * `banger completion bash`'s script as bash runs it (sourced, then called as bash's programmable completion
 * calls it, with COMP_WORDS and COMP_CWORD) against the real three services with a VM on a fake VMM, and
 * against an orchestrator that is down or never answers.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FAKE_VM_TOOLS, startFakeVmCluster } from "./fake-vm-cluster.js";
import { BANGER, OWNER_CAN_READ_CHECKOUT, type Cluster } from "./harness.js";
import { IS_ROOT } from "./netns.js";

const RUNS =
  IS_ROOT &&
  OWNER_CAN_READ_CHECKOUT &&
  requireTools("shell completion against a VM on a fake VMM", FAKE_VM_TOOLS).length === 0;

let cluster: Cluster;
let shutdown: () => Promise<void>;
beforeAll(async () => {
  if (!RUNS) return;
  const started = await startFakeVmCluster();
  ({ cluster, shutdown } = started);
  const created = await cluster.cli(["vm", "create", "--name", "web-1", "--image", "tiny", "--no-ssh-wait"]);
  expect(created.code, created.stderr).toBe(0);
});
afterAll(async () => {
  if (RUNS) await shutdown();
});

/** What bash's completion offers for `line` (the cursor at its end), `banger` found on PATH as a user has it. */
function bashCompletes(line: string, env: NodeJS.ProcessEnv): Promise<string[]> {
  const words = line.split(" ");
  const script = [
    "source <(banger completion bash)",
    'complete -p banger >/dev/null || { echo "not registered" >&2; exit 3; }',
    `COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")})`,
    `COMP_CWORD=${words.length - 1}`,
    "_banger_complete",
    'printf "%s\\n" "${COMPREPLY[@]}"',
  ].join("\n");
  return new Promise((resolve, reject) => {
    const child = spawn("bash", ["-c", script], {
      env: { ...process.env, PATH: `${dirname(BANGER)}:${process.env["PATH"] ?? ""}`, BANGER_SOCKET: "", ...env },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.once("error", reject);
    child.once("close", (code) => {
      if (code !== 0) reject(new Error(`bash exited ${code}: ${stderr}`));
      else resolve(stdout.split("\n").filter((l) => l !== ""));
    });
  });
}

describe.skipIf(!RUNS)("banger completion bash", () => {
  const env = () => ({ BANGER_RUNTIME_DIR: cluster.runtimeDir });

  it("completes subcommands and options from the command tree", async () => {
    expect(await bashCompletes("banger ", env())).toEqual(expect.arrayContaining(["vm", "image", "completion"]));
    expect(await bashCompletes("banger vm st", env())).toEqual(["start", "stop", "stats"]);
    expect(await bashCompletes("banger image pull --re", env())).toEqual(["--replace"]);
  });

  it("completes VM, image and kernel names from the orchestrator", async () => {
    expect(await bashCompletes("banger vm show ", env())).toEqual(["web-1"]);
    expect(await bashCompletes("banger vm stop w", env())).toEqual(["web-1"]);
    expect(await bashCompletes("banger vm create --image t", env())).toEqual(["tiny"]);
    expect(await bashCompletes("banger kernel show ", env())).toEqual(["k61"]);
    // --socket before the cursor names the orchestrator asked.
    const socket = join(cluster.runtimeDir, "orchestrator.sock");
    expect(await bashCompletes(`banger --socket ${socket} vm delete `, {})).toEqual(["web-1"]);
  });
});

describe("banger completion without an orchestrator", () => {
  let dir: string;
  let silent: Server;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "banger-completion-"));
    // Accepts connections and never answers: a bangerd stuck starting.
    silent = createServer((connection) => connection.resume()); // reads, never writes

    await new Promise<void>((resolve) => silent.listen(join(dir, "silent.sock"), resolve));
  });
  afterAll(async () => {
    await new Promise((resolve) => silent.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  it("offers no names when bangerd is down or does not answer within the deadline, and still the commands", async () => {
    expect(await bashCompletes("banger vm show ", { BANGER_SOCKET: join(dir, "absent.sock") })).toEqual([]);
    expect(await bashCompletes("banger vm show ", { BANGER_SOCKET: join(dir, "silent.sock") })).toEqual([]);
    expect(await bashCompletes("banger op ", { BANGER_SOCKET: join(dir, "absent.sock") })).toEqual([
      "list",
      "show",
      "watch",
      "cancel",
    ]);
  });
});
