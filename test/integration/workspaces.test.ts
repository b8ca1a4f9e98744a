/**
 * WorkspaceService as its clients see it: the orchestrator's workspace and
 * operation services on a real Unix socket (the real interceptors map the
 * errors), a generated gRPC client, the real CLI, real git repositories and
 * a real OpenSSH server on 127.0.0.1 standing in for the guest. Faked: the
 * VM lifecycle (one VM "box" whose guest is that sshd), since no guest boots
 * here; services/orchestrator/src/core/workspaces.test.ts covers the rest.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import {
  FailedPreconditionError,
  NotFoundError,
  createLogger,
  createUnixTransport,
  startUnixServer,
  type UnixServer,
  type UnixTransport,
} from "@banger/common";
import { OperationService, OperationState, file_banger_v1_operation } from "@banger/gen/banger/v1/operation_pb.js";
import {
  ExportFormat,
  WorkspaceMode,
  WorkspaceService,
  file_banger_v1_workspace,
} from "@banger/gen/banger/v1/workspace_pb.js";
import { ErrorInfoSchema } from "@banger/gen/google/rpc/error_details_pb.js";
import { Code, createClient, type ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createOperations } from "../../services/orchestrator/src/core/operations.js";
import { sshdSkip, startTestGuest, type TestGuest } from "../../services/orchestrator/test-support/sshd.js";
import { createWorkspaces } from "../../services/orchestrator/src/core/workspaces.js";
import { createOperationService } from "../../services/orchestrator/src/rpc/operation-service.js";
import { createWorkspaceService } from "../../services/orchestrator/src/rpc/workspace-service.js";
import { openStore, type Store } from "../../services/orchestrator/src/store/index.js";
import { failure, runCli } from "./harness.js";

const sshdMissing = sshdSkip("workspaces through the socket and the CLI", ["git", "tar"]);

let dir: string;
let guest: TestGuest;
let store: Store;
let server: UnixServer;
let transport: UnixTransport;
const vm = { id: "vm-0001", state: "running", pid: 4242 };

function git(cwd: string, ...args: string[]): string {
  return execFileSync("git", ["-c", "user.name=dev", "-c", "user.email=dev@example.com", ...args], {
    cwd,
    encoding: "utf8",
  });
}

function makeRepo(path: string): string {
  mkdirSync(path, { recursive: true });
  git(path, "init", "-q", "-b", "main");
  writeFileSync(join(path, "README.md"), "# demo\n");
  writeFileSync(join(path, ".gitignore"), "*.log\n");
  git(path, "add", "-A");
  git(path, "commit", "-q", "-m", "first");
  writeFileSync(join(path, "notes.txt"), "untracked\n");
  return path;
}

const reasonOf = (error: ConnectError) => error.findDetails(ErrorInfoSchema)[0]?.reason;

beforeAll(async () => {
  if (sshdMissing) return;
  dir = mkdtempSync(join(tmpdir(), "banger-ws-"));
  guest = await startTestGuest();
  store = await openStore(join(dir, "state.db"));
  const logger = createLogger({ service: "orchestrator", destination: new Writable({ write: (_c, _e, d) => d() }) });
  const operations = createOperations({ db: store.db, logger });
  const get = (name: string) =>
    name === "box"
      ? Promise.resolve({ ...vm })
      : Promise.reject(new NotFoundError(`VM ${name} does not exist`, { reason: "VM_NOT_FOUND" }));
  const workspaces = createWorkspaces({
    vms: {
      get,
      async guestTarget(name) {
        if ((await get(name)).state !== "running") {
          throw new FailedPreconditionError(`VM ${name} is not running`, { reason: "VM_NOT_RUNNING" });
        }
        return guest.target("busybox");
      },
      list: () => Promise.resolve([{ id: vm.id }]),
    },
    operations,
    stateDir: join(dir, "state"),
    home: join(dir, "home"),
    logger,
  });
  mkdirSync(join(dir, "home"));
  server = await startUnixServer({
    socketPath: join(dir, "orchestrator.sock"),
    mode: 0o600,
    logger,
    files: [file_banger_v1_workspace, file_banger_v1_operation],
    routes: (router) => {
      router.service(WorkspaceService, createWorkspaceService(workspaces));
      router.service(OperationService, createOperationService(operations));
    },
  });
  transport = createUnixTransport(server.socketPath, { peer: "orchestrator" });
});

afterAll(async () => {
  transport?.close();
  await server?.close(100);
  await store?.close();
  guest?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(sshdMissing)("workspaces through the socket", () => {
  it("PrepareWorkspace returns the operation at once; ExportWorkspace streams a patch in messages of at most 64 KiB", async () => {
    const workspaces = createClient(WorkspaceService, transport.transport);
    const operations = createClient(OperationService, transport.transport);
    const repo = makeRepo(join(dir, "home", "big"));
    const dest = join(guest.dir, "guest", "big");
    const { operation } = await workspaces.prepareWorkspace({
      vm: "box",
      hostPath: repo,
      guestPath: dest,
      mode: WorkspaceMode.COPY,
    });
    expect([operation?.target, operation?.state]).toEqual(["box", OperationState.RUNNING]);
    let last;
    for await (const { operation: seen } of operations.watchOperation({ id: operation?.id ?? "" })) last = seen;
    expect(last?.state).toBe(OperationState.SUCCEEDED);
    expect(last?.stages.map((s) => s.name)).toEqual(["scan", "baseline", "upload"]);

    const lines = Array.from({ length: 4000 }, (_, i) => `line ${i} written in the guest\n`).join("");
    writeFileSync(join(dest, "big.txt"), lines);
    const messages: Uint8Array[] = [];
    for await (const { data } of workspaces.exportWorkspace({ vm: "box", format: ExportFormat.PATCH })) {
      messages.push(data);
    }
    expect(messages.length).toBeGreaterThan(1);
    expect(Math.max(...messages.map((m) => m.length))).toBeLessThanOrEqual(64 * 1024);
    execFileSync("git", ["apply", "-"], { cwd: repo, input: Buffer.concat(messages) });
    expect(readFileSync(join(repo, "big.txt"), "utf8")).toBe(lines);
  });

  it("refuses with the code and reason the client gets, and the op id", async () => {
    const workspaces = createClient(WorkspaceService, transport.transport);
    const repo = makeRepo(join(dir, "home", "refused"));
    const prepare = (change: { vm?: string; hostPath?: string; mode?: WorkspaceMode }) =>
      failure(() => workspaces.prepareWorkspace({ vm: "box", hostPath: repo, guestPath: "/srv/refused", ...change }));
    const exportOf = (change: { vm?: string; guestPath?: string; format?: ExportFormat }) =>
      failure(async () => {
        for await (const _ of workspaces.exportWorkspace({ vm: "box", ...change })) void _;
      });
    const outside = makeRepo(join(dir, "outside"));
    const withSubmodule = makeRepo(join(dir, "home", "with-submodule"));
    git(withSubmodule, "-c", "protocol.file.allow=always", "submodule", "add", "-q", outside, "lib");

    const cases: [Promise<ConnectError>, Code, string][] = [
      [prepare({ hostPath: "relative/path" }), Code.InvalidArgument, "INVALID_PATH"],
      [prepare({ hostPath: outside }), Code.PermissionDenied, "PATH_OUTSIDE_HOME"],
      [prepare({ hostPath: join(dir, "home") }), Code.InvalidArgument, "NOT_A_GIT_REPOSITORY"],
      [prepare({ hostPath: withSubmodule }), Code.FailedPrecondition, "SUBMODULES_UNSUPPORTED"],
      [prepare({ mode: 7 as WorkspaceMode }), Code.InvalidArgument, "INVALID_MODE"],
      [prepare({ vm: "nosuch" }), Code.NotFound, "VM_NOT_FOUND"],
      [prepare({ vm: "-bad" }), Code.InvalidArgument, "INVALID_VM_NAME"],
      [exportOf({ guestPath: "/srv/never-prepared" }), Code.FailedPrecondition, "NO_WORKSPACE"],
      [exportOf({ guestPath: "srv" }), Code.InvalidArgument, "INVALID_GUEST_PATH"],
      [exportOf({ format: 5 as ExportFormat }), Code.InvalidArgument, "INVALID_FORMAT"],
    ];
    for (const [call, code, reason] of cases) {
      const error = await call;
      expect([Code[error.code], reasonOf(error)], error.rawMessage).toEqual([Code[code], reason]);
      expect(error.findDetails(ErrorInfoSchema)[0]?.metadata["op_id"]).toMatch(/^op-[0-9a-f]{12}$/);
    }
    vm.state = "stopped";
    try {
      const stopped = await prepare({});
      expect([stopped.code, reasonOf(stopped)]).toEqual([Code.FailedPrecondition, "VM_NOT_RUNNING"]);
    } finally {
      vm.state = "running";
    }
  });

  it("the CLI: prepare follows the operation, export --out writes a patch git apply takes; exit codes 0, 1, 2", async () => {
    const socket = ["--socket", server.socketPath];
    const repo = makeRepo(join(dir, "home", "cli"));
    const dest = join(guest.dir, "guest", "cli");
    const prepared = await runCli([...socket, "workspace", "prepare", "box", "--path", repo, "--guest-path", dest]);
    expect(prepared.code, prepared.stderr).toBe(0);
    expect(prepared.stderr).toMatch(/^preparing .*cli in box \(op-[0-9a-f]{12}\)\n/);
    expect(prepared.stderr).toContain("upload       done");
    expect(prepared.stdout).toMatch(/^prepared box: 3 files \+ \.git, 0\.\d MiB into .*\/cli\n$/);

    const empty = await runCli([...socket, "workspace", "export", "box"]);
    expect([empty.code, empty.stdout, empty.stderr]).toEqual([0, "", "no changes in box since the prepare\n"]);

    writeFileSync(join(dest, "README.md"), "# demo\nfrom the guest\n");
    const out = join(dir, "changes.patch");
    const exported = await runCli([...socket, "workspace", "export", "box", "--out", out, "--json"]);
    expect(exported.code, exported.stderr).toBe(0);
    expect(JSON.parse(exported.stdout)).toMatchObject({ vm: "box", format: "patch", out, changes: true });
    execFileSync("git", ["apply", out], { cwd: repo });
    expect(readFileSync(join(repo, "README.md"), "utf8")).toBe("# demo\nfrom the guest\n");

    const tar = await runCli([...socket, "workspace", "export", "box", "--format", "tar", "--out", join(dir, "w.tar")]);
    expect(tar.code, tar.stderr).toBe(0);
    expect(execFileSync("tar", ["-tf", join(dir, "w.tar")], { encoding: "utf8" })).toContain("./README.md");

    const usage = await runCli([...socket, "workspace", "prepare", "box", "--mode", "svn"]);
    expect([usage.code, usage.stderr]).toEqual([2, expect.stringContaining("--mode takes copy or git, got svn")]);
    const missing = await runCli([...socket, "workspace", "export", "nosuch", "--out", join(dir, "none.patch")]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^banger: VM nosuch does not exist \(op-[0-9a-f]{12}\)\n$/);
    expect(existsSync(join(dir, "none.patch"))).toBe(false);

    const help = await runCli(["workspace", "prepare", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("sh, tar, mkdir, mv and rm (busybox's are enough)");
  });
});
