/**
 * Workspaces end to end on the host side: real git repositories in a
 * temporary "home", real tar, and a real OpenSSH server on 127.0.0.1
 * standing in for the guest (the guest paths are directories of this
 * machine). What is faked: the VM lifecycle (a VM record whose state a test
 * flips), since no guest boots here.
 */
import { execFileSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { Writable } from "node:stream";
import { FailedPreconditionError, NotFoundError, createLogger, type BangerError } from "@banger/common";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { useStore, useTempDir } from "../../test-support/store.js";
import { createOperations, type Operations } from "./operations.js";
import { sshdSkip, startTestGuest, type GuestKind, type TestGuest } from "../../test-support/sshd.js";
import {
  createWorkspaces,
  defaultGuestPath,
  validGuestPath,
  type WorkspaceVms,
  type Workspaces,
} from "./workspaces.js";

/** The repositories the tests prepare and export are made with the host's git and tar. */
const sshdMissing = sshdSkip("workspaces over SSH", ["git", "tar"]);

const store = useStore();
const temp = useTempDir();
const logger = createLogger({ service: "orchestrator", destination: new Writable({ write: (_c, _e, d) => d() }) });

let guest: TestGuest;
beforeAll(async () => {
  if (!sshdMissing) guest = await startTestGuest();
});
afterAll(() => guest?.stop());

/** Runs a host command; returns its stdout. */
function run(cwd: string, argv: string[], input?: string | Buffer): string {
  const [command = "", ...args] = argv;
  return execFileSync(command, args, { cwd, encoding: "utf8", ...(input === undefined ? {} : { input }) });
}

function git(cwd: string, ...args: string[]): string {
  return run(cwd, ["git", "-c", "user.name=dev", "-c", "user.email=dev@example.com", ...args]);
}

function write(path: string, content: string | Buffer, mode?: number): void {
  mkdirSync(join(path, ".."), { recursive: true });
  writeFileSync(path, content);
  if (mode !== undefined) chmodSync(path, mode);
}

/**
 * A repository with one commit, then a working tree with an uncommitted
 * change, untracked files that are not ignored, and ignored ones.
 */
function makeRepo(dir: string): string {
  mkdirSync(dir, { recursive: true });
  git(dir, "init", "-q", "-b", "main");
  write(join(dir, "README.md"), "# demo\n");
  write(join(dir, "src/app.js"), "console.log(1);\n");
  write(join(dir, "run.sh"), "#!/bin/sh\necho run\n", 0o755);
  write(join(dir, ".gitignore"), "*.log\nbuild/\n");
  symlinkSync("README.md", join(dir, "link"));
  git(dir, "add", "-A");
  git(dir, "commit", "-q", "-m", "first");
  write(join(dir, "src/app.js"), "console.log(2);\n"); // tracked, changed, not committed
  write(join(dir, "notes.txt"), "untracked, not ignored\n");
  write(join(dir, "dir with space/file #1.txt"), "spaces\n");
  write(join(dir, "debug.log"), "ignored\n");
  write(join(dir, "build/out.bin"), "ignored too\n");
  return dir;
}

/** Every file and symlink under `dir`, relative, sorted; `.git` left out. */
function treeOf(dir: string): string[] {
  const found: string[] = [];
  const walk = (sub: string) => {
    for (const entry of readdirSync(join(dir, sub), { withFileTypes: true })) {
      const rel = sub ? `${sub}/${entry.name}` : entry.name;
      if (rel === ".git") continue;
      if (entry.isDirectory()) walk(rel);
      else found.push(rel);
    }
  };
  walk("");
  return found.sort();
}

interface Fixture {
  home: string;
  /** A fresh guest directory path (nothing there yet). */
  dest: string;
  vm: { id: string; state: string; pid: number };
  kind: { value: GuestKind };
  operations: Operations;
  workspaces: Workspaces;
}

let count = 0;
function fixture(kind: GuestKind = "busybox"): Fixture {
  const home = join(temp(), "home");
  mkdirSync(home, { recursive: true });
  const vm = { id: "vm-0001", state: "running", pid: 4242 };
  const chosen = { value: kind };
  const get = (name: string) => {
    if (name !== "box") {
      return Promise.reject(new NotFoundError(`VM ${name} does not exist`, { reason: "VM_NOT_FOUND" }));
    }
    return Promise.resolve({ ...vm });
  };
  const vms: WorkspaceVms = {
    get,
    async guestTarget(name) {
      const found = await get(name);
      if (found.state !== "running") {
        throw new FailedPreconditionError(`VM ${name} is not running`, { reason: "VM_NOT_RUNNING" });
      }
      return guest.target(chosen.value);
    },
    list: () => Promise.resolve([{ id: vm.id }]),
  };
  const operations = createOperations({ db: store().db, logger });
  const workspaces = createWorkspaces({ vms, operations, stateDir: join(temp(), "state"), home, logger });
  return { home, dest: join(guest.dir, "guest", `ws-${++count}`, "repo"), vm, kind: chosen, operations, workspaces };
}

async function finished(f: Fixture, id: string) {
  await f.operations.settled();
  return f.operations.get(id);
}

async function exported(f: Fixture, format: "patch" | "tar" = "patch", guestPath = ""): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of await f.workspaces.export({ vm: "box", guestPath, format }, new AbortController().signal))
    chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function refusal(promise: Promise<unknown>): Promise<BangerError> {
  const error = await promise.then(
    () => expect.fail("expected a refusal"),
    (e: unknown) => e,
  );
  return error as BangerError;
}

describe("guest paths", () => {
  it("default to /root/<repository directory> and refuse what a workspace must not replace", () => {
    expect(defaultGuestPath("/home/dev/src/banger")).toBe("/root/banger");
    expect(validGuestPath("/srv/app")).toBe("/srv/app");
    for (const bad of ["relative/x", "/", "/root", "/srv", "/root/.ssh", "/root/.ssh/x", "/a/../b", "/a//b", "/a/b/"]) {
      expect(() => validGuestPath(bad), bad).toThrow(expect.objectContaining({ reason: "INVALID_GUEST_PATH" }));
    }
  });
});

describe.skipIf(sshdMissing)("workspaces over SSH (a real sshd on 127.0.0.1 as the guest)", () => {
  it.each<GuestKind>(["busybox", "full"])(
    "COPY (%s guest): tracked and untracked-not-ignored files arrive, ignored ones do not, with a one-commit repository",
    async (kind) => {
      const f = fixture(kind);
      const repo = makeRepo(join(f.home, "src", "demo"));
      const started = await f.workspaces.prepare({
        vm: "box",
        hostPath: join(repo, "src"),
        guestPath: f.dest,
        mode: "copy",
      });
      expect([started.kind, started.target]).toEqual(["prepare-workspace", "box"]);
      const op = await finished(f, started.id);
      expect(op.error).toBeNull();
      expect(op.stages.map((s) => [s.name, s.state])).toEqual([
        ["scan", "done"],
        ["baseline", "done"],
        ["upload", "done"],
      ]);
      expect(op.stages[2]?.message).toMatch(new RegExp(`^7 files \\+ \\.git, 0\\.\\d MiB into ${f.dest}$`));

      expect(treeOf(f.dest)).toEqual([
        ".gitignore",
        "README.md",
        "dir with space/file #1.txt",
        "link",
        "notes.txt",
        "run.sh",
        "src/app.js",
      ]);
      expect(readFileSync(join(f.dest, "src/app.js"), "utf8")).toBe("console.log(2);\n"); // as in the working tree
      expect(readlinkSync(join(f.dest, "link"))).toBe("README.md");
      expect(statSync(join(f.dest, "run.sh")).mode & 0o777).toBe(0o755);
      // The guest's .git: one commit of exactly that, on the host's branch, and a clean status.
      expect(git(f.dest, "log", "--format=%an %s").trim()).toMatch(/^banger banger workspace: .*demo/);
      expect(git(f.dest, "rev-parse", "--abbrev-ref", "HEAD").trim()).toBe("main");
      expect(git(f.dest, "status", "--porcelain")).toBe("");
      // Nothing changed yet: an empty patch.
      expect((await exported(f)).length).toBe(0);
    },
  );

  it.each<GuestKind>(["busybox", "full"])(
    "export (%s guest) gives a patch that git apply takes on the host, with the guest's edits only",
    async (kind) => {
      const f = fixture(kind);
      const repo = makeRepo(join(f.home, "demo"));
      await finished(
        f,
        (await f.workspaces.prepare({ vm: "box", hostPath: repo, guestPath: f.dest, mode: "copy" })).id,
      );
      // In the guest: an edit, a new file, a deletion, a binary file, a mode change, and an ignored file.
      write(join(f.dest, "README.md"), "# demo\n\nedited in the guest\n");
      write(join(f.dest, "new dir/new.txt"), "made in the guest\n");
      unlinkSync(join(f.dest, "notes.txt"));
      const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      write(join(f.dest, "img.bin"), binary);
      chmodSync(join(f.dest, "README.md"), 0o755);
      write(join(f.dest, "guest.log"), "ignored in the guest too\n");

      const bytes = await exported(f);
      const patch = bytes.toString();
      expect(patch).toContain("diff --git a/README.md b/README.md");
      expect(patch).toContain("+edited in the guest");
      expect(patch).toContain("diff --git a/new dir/new.txt b/new dir/new.txt");
      expect(patch).toContain("deleted file mode 100644");
      expect(patch).toContain("GIT binary patch");
      expect(patch).not.toContain("guest.log");
      expect(patch).not.toContain("src/app.js"); // changed on the host before the prepare: not a guest change

      // The host repository takes it as is.
      run(repo, ["git", "apply", "--check", "-"], bytes);
      run(repo, ["git", "apply", "-"], bytes);
      expect(readFileSync(join(repo, "README.md"), "utf8")).toBe("# demo\n\nedited in the guest\n");
      expect(statSync(join(repo, "README.md")).mode & 0o111).not.toBe(0);
      expect(readFileSync(join(repo, "new dir/new.txt"), "utf8")).toBe("made in the guest\n");
      expect(existsSync(join(repo, "notes.txt"))).toBe(false);
      expect(readFileSync(join(repo, "img.bin"))).toEqual(binary);
    },
  );

  it("export as tar: the whole workspace as it is in the guest, without .git", async () => {
    const f = fixture();
    const repo = makeRepo(join(f.home, "demo"));
    await finished(f, (await f.workspaces.prepare({ vm: "box", hostPath: repo, guestPath: f.dest, mode: "copy" })).id);
    write(join(f.dest, "guest.log"), "ignored, but it is in the workspace\n");
    const tar = await exported(f, "tar", f.dest);
    const listed = run(temp(), ["tar", "-tf", "-"], tar.toString("latin1"));
    const names = listed
      .split("\n")
      .filter(Boolean)
      .map((n) => n.replace(/^\.\//, "").replace(/\/$/, ""));
    expect(names).toContain("README.md");
    expect(names).toContain("guest.log");
    expect(names).toContain("dir with space/file #1.txt");
    expect(names.filter((n) => n === ".git" || n.startsWith(".git/"))).toEqual([]);
  });

  it("GIT mode: the history and the uncommitted state arrive (no git in the guest); the patch holds only guest edits", async () => {
    const f = fixture("busybox");
    const repo = makeRepo(join(f.home, "demo"));
    write(join(repo, "staged.txt"), "staged, not committed\n");
    git(repo, "add", "staged.txt");
    const op = await finished(
      f,
      (await f.workspaces.prepare({ vm: "box", hostPath: repo, guestPath: f.dest, mode: "git" })).id,
    );
    expect(op.state).toBe("succeeded");
    expect(git(f.dest, "log", "--format=%s").trim()).toBe("first");
    expect(git(f.dest, "status", "--porcelain").split("\n").filter(Boolean).sort()).toEqual([
      " M src/app.js",
      '?? "dir with space/"',
      "?? notes.txt",
      "A  staged.txt",
    ]);
    expect(existsSync(join(f.dest, "debug.log"))).toBe(false);

    write(join(f.dest, "src/app.js"), "console.log(3);\n");
    const patch = (await exported(f)).toString();
    expect(patch).toContain("-console.log(2);\n+console.log(3);");
    expect(patch.match(/^diff --git/gm)).toHaveLength(1);
    run(repo, ["git", "apply", "-"], patch);
    expect(readFileSync(join(repo, "src/app.js"), "utf8")).toBe("console.log(3);\n");
  });

  it("refuses, before any operation starts, what it cannot or must not copy", async () => {
    const f = fixture();
    const repo = makeRepo(join(f.home, "demo"));
    const prepare = (hostPath: string, extra: { guestPath?: string; vm?: string; mode?: "copy" | "git" } = {}) =>
      refusal(
        f.workspaces.prepare({
          vm: extra.vm ?? "box",
          hostPath,
          guestPath: extra.guestPath ?? f.dest,
          mode: extra.mode ?? "copy",
        }),
      );
    const reasonOf = async (p: Promise<BangerError>) => {
      const e = await p;
      return [e.kind, e.reason];
    };
    expect(await reasonOf(prepare("demo"))).toEqual(["invalid-argument", "INVALID_PATH"]);
    expect(await reasonOf(prepare(join(f.home, "missing")))).toEqual(["invalid-argument", "INVALID_PATH"]);
    const outside = makeRepo(join(temp(), "elsewhere"));
    expect(await reasonOf(prepare(outside))).toEqual(["permission-denied", "PATH_OUTSIDE_HOME"]);
    symlinkSync(outside, join(f.home, "sneaky"));
    expect(await reasonOf(prepare(join(f.home, "sneaky")))).toEqual(["permission-denied", "PATH_OUTSIDE_HOME"]);
    mkdirSync(join(f.home, "plain"));
    expect(await reasonOf(prepare(join(f.home, "plain")))).toEqual(["invalid-argument", "NOT_A_GIT_REPOSITORY"]);
    expect(await reasonOf(prepare(join(repo, ".git")))).toEqual(["invalid-argument", "NOT_A_GIT_REPOSITORY"]);
    expect(await reasonOf(prepare(repo, { guestPath: "/root" }))).toEqual(["invalid-argument", "INVALID_GUEST_PATH"]);
    expect(await reasonOf(prepare(repo, { vm: "Bad Name" }))).toEqual(["invalid-argument", "INVALID_VM_NAME"]);
    expect(await reasonOf(prepare(repo, { vm: "other" }))).toEqual(["not-found", "VM_NOT_FOUND"]);
    git(repo, "worktree", "add", "-q", join(f.home, "linked"));
    expect(await reasonOf(prepare(join(f.home, "linked"), { mode: "git" }))).toEqual([
      "failed-precondition",
      "UNSUPPORTED_GIT_LAYOUT",
    ]);
    f.vm.state = "stopped";
    expect(await reasonOf(prepare(repo))).toEqual(["failed-precondition", "VM_NOT_RUNNING"]);
    expect(await f.operations.list({ limit: 10 })).toEqual([]);
  });

  it("refuses a repository with a submodule, or with another repository inside it, naming them", async () => {
    const f = fixture();
    const library = makeRepo(join(temp(), "library"));
    git(library, "add", "-A");
    git(library, "commit", "-q", "-m", "all");
    const repo = makeRepo(join(f.home, "app"));
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", library, "vendor/library");
    const error = await refusal(f.workspaces.prepare({ vm: "box", hostPath: repo, guestPath: f.dest, mode: "copy" }));
    expect([error.kind, error.reason]).toEqual(["failed-precondition", "SUBMODULES_UNSUPPORTED"]);
    expect(error.message).toContain("submodules");

    const other = makeRepo(join(f.home, "other"));
    git(join(other, "build"), "init", "-q"); // ignored: fine
    makeRepo(join(other, "tools", "nested"));
    const nested = await refusal(f.workspaces.prepare({ vm: "box", hostPath: other, guestPath: f.dest, mode: "copy" }));
    expect([nested.reason, nested.message]).toEqual([
      "SUBMODULES_UNSUPPORTED",
      expect.stringContaining('"tools/nested/"') as unknown,
    ]);
    expect(await f.operations.list({ limit: 10 })).toEqual([]);
  });

  it("export of nothing prepared is NO_WORKSPACE; a VM that does not run, VM_NOT_RUNNING", async () => {
    const f = fixture();
    const none = await refusal(exported(f));
    expect([none.kind, none.reason]).toEqual(["failed-precondition", "NO_WORKSPACE"]);
    const repo = makeRepo(join(f.home, "demo"));
    await finished(f, (await f.workspaces.prepare({ vm: "box", hostPath: repo, guestPath: f.dest, mode: "copy" })).id);
    const elsewhere = await refusal(exported(f, "patch", "/srv/other"));
    expect(elsewhere.reason).toBe("NO_WORKSPACE");
    rmSync(f.dest, { recursive: true });
    const gone = await refusal(exported(f));
    expect([gone.reason, gone.message]).toEqual(["NO_WORKSPACE", `the workspace ${f.dest} is no longer in the guest`]);
    f.vm.state = "stopped";
    expect((await refusal(exported(f))).reason).toBe("VM_NOT_RUNNING");
  });

  it("serialises two prepares on one VM: the second waits, then replaces the first", async () => {
    const f = fixture();
    const first = makeRepo(join(f.home, "first"));
    const second = makeRepo(join(f.home, "second"));
    write(join(first, "first.txt"), "1\n");
    write(join(second, "second.txt"), "2\n");
    const a = await f.workspaces.prepare({ vm: "box", hostPath: first, guestPath: f.dest, mode: "copy" });
    const b = await f.workspaces.prepare({ vm: "box", hostPath: second, guestPath: f.dest, mode: "copy" });
    await f.operations.settled();
    const [opA, opB] = [await f.operations.get(a.id), await f.operations.get(b.id)];
    expect([opA.state, opB.state]).toEqual(["succeeded", "succeeded"]);
    expect(opB.stages.map((s) => s.name)).toEqual(["wait-workspace", "scan", "baseline", "upload"]);
    const uploadA = opA.stages.find((s) => s.name === "upload");
    const scanB = opB.stages.find((s) => s.name === "scan");
    expect(scanB?.startedAt?.getTime()).toBeGreaterThanOrEqual(uploadA?.endedAt?.getTime() ?? Infinity);
    expect(existsSync(join(f.dest, "second.txt"))).toBe(true);
    expect(existsSync(join(f.dest, "first.txt"))).toBe(false);
    expect((await exported(f)).length).toBe(0); // the baseline is the second one's
  });

  it("a prepare cut off by its VM stopping fails with VM_STOPPED and leaves the guest's workspace as it was", async () => {
    const f = fixture();
    const repo = makeRepo(join(f.home, "demo"));
    await finished(f, (await f.workspaces.prepare({ vm: "box", hostPath: repo, guestPath: f.dest, mode: "copy" })).id);
    write(join(repo, "later.txt"), "not there yet\n");

    f.kind.value = "stalled"; // its tar waits: the transfer is in flight until the VM stops
    const started = await f.workspaces.prepare({ vm: "box", hostPath: repo, guestPath: f.dest, mode: "copy" });
    for (let i = 0; i < 600 && !existsSync(guest.stalledStarted); i++) await new Promise((r) => setTimeout(r, 50));
    f.vm.state = "stopped"; // as StopVm would (it does not wait for the workspace lock)
    const op = await finished(f, started.id);
    expect([op.state, op.error?.code, op.error?.reason, op.error?.stage]).toEqual([
      "failed",
      "failed_precondition",
      "VM_STOPPED",
      "upload",
    ]);
    expect(op.error?.message).toBe(`VM box was stopped while its workspace ${f.dest} was being prepared`);
    expect(existsSync(join(f.dest, "later.txt"))).toBe(false);
    expect(existsSync(join(f.dest, "README.md"))).toBe(true);

    // Even if the guest's tar ends well after all (this guest kept running), nothing is swapped in:
    // the lock is free, and the guest's workspace and the host's baseline still agree.
    guest.releaseStalled();
    f.vm.state = "running";
    f.kind.value = "busybox";
    expect((await exported(f)).length).toBe(0);
  });
});
