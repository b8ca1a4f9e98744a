// A fork of a running guest against a cold create of the same image, both to exec-able, in the same run
// (issue 20: goal ≤ 0.2× the cold create under QEMU TCG).
//
// The services, kernel and image of real-guests.mjs (QEMU microvm under TCG, image `tiny`). One source
// VM is created and snapshotted while it runs (SnapshotVm); then, in turns so that both see the same
// load (the source running beside each):
//   cold: CreateVm of `tiny` + WatchOperation (waits for the agent and SSH), then Exec `true` until it
//         exits 0 — from the CreateVm call to that exit; the VM is deleted after.
//   fork: CreateVm from the snapshot (the new VM resumes from its memory and gets its own identity),
//         measured the same way; deleted after.
// Medians of BENCH_FORK_RUNS (3) each, and the fork's stages: where its time goes.
import { fmt, printTable, report } from "./lib.mjs";
import { durationMs, median, ms, realGuestSkipReason, untilExecAble, withRealGuests } from "./real-guests.mjs";

const RUNS = Number(process.env.BENCH_FORK_RUNS ?? 3);
const HEADING = "\n## real guest: fork → exec-able vs cold create → exec-able (QEMU microvm, TCG, image tiny)\n";
const GOAL = 0.2;
const SNAPSHOT = "bench-fork";
const SSH_TIMEOUT = { seconds: 180n, nanos: 0 };

export async function benchFork() {
  const skip = realGuestSkipReason();
  if (skip) {
    console.log(`${HEADING}\nskipped: ${skip}`);
    return;
  }
  await withRealGuests(async ({ vms, watch, execTrue }) => {
    /** CreateVm `request` → exec-able, then DeleteVm: the times and the create's stages. */
    const measureCreate = async (request) => {
      const t0 = performance.now();
      const { operation } = await vms.createVm({ ...request, sshTimeout: SSH_TIMEOUT });
      const ended = await watch(operation.id);
      const created = ms(t0);
      const tries = await untilExecAble(execTrue, request.name);
      const total = ms(t0);
      // A second Exec on the same VM: what an exec costs once the guest has run one (a warm path).
      const t1 = performance.now();
      await execTrue(request.name);
      const nextExec = ms(t1);
      await watch((await vms.deleteVm({ name: request.name })).operation.id);
      return { ms: total, created, tries, nextExec, stages: ended.stages };
    };

    // The source: created, exec-able, then snapshotted while it runs; it runs on beside every sample.
    const { operation: creating } = await vms.createVm({ name: "fork-source", image: "tiny", sshTimeout: SSH_TIMEOUT });
    await watch(creating.id);
    await untilExecAble(execTrue, "fork-source");
    const t0 = performance.now();
    const { operation: snapshotting } = await vms.snapshotVm({ name: "fork-source", as: SNAPSHOT });
    const snapshot = await watch(snapshotting.id);
    const snapshotMs = ms(t0);

    const cold = [];
    const fork = [];
    for (let i = 0; i < RUNS; i++) {
      cold.push(await measureCreate({ name: `cold-${i}`, image: "tiny" }));
      fork.push(await measureCreate({ name: `fork-${i}`, fromSnapshot: SNAPSHOT }));
    }
    await watch((await vms.deleteVm({ name: "fork-source" })).operation.id);
    await vms.deleteSnapshot({ name: SNAPSHOT });

    const coldMs = median(cold.map((r) => r.ms));
    const forkMs = median(fork.map((r) => r.ms));
    console.log(HEADING);
    console.log(
      "cold: CreateVm of tiny + WatchOperation (waits for the agent and SSH), then Exec `true` until it exits 0.\n" +
        "fork: CreateVm from a snapshot of a running VM of tiny (taken once), measured the same way.\n" +
        "next exec: one more Exec `true` on the same VM right after (not part of either figure).\n" +
        "Taken in turns, the snapshot's source running beside each; each VM deleted after.\n",
    );
    printTable(
      [
        "run",
        "cold ms",
        "  create",
        "  exec tries",
        "  next exec",
        "fork ms",
        "  create",
        "  exec tries",
        "  next exec",
      ],
      cold.map((c, i) => [
        String(i + 1),
        fmt(c.ms, 0),
        fmt(c.created, 0),
        String(c.tries),
        fmt(c.nextExec, 0),
        fmt(fork[i].ms, 0),
        fmt(fork[i].created, 0),
        String(fork[i].tries),
        fmt(fork[i].nextExec, 0),
      ]),
    );
    console.log(
      `\nmedian: cold ${fmt(coldMs, 0)} ms, fork ${fmt(forkMs, 0)} ms, ratio ${fmt(forkMs / coldMs)}x (goal ≤ ${GOAL}x)`,
    );
    console.log("");
    printTable(
      ["fork stage", ...fork.map((_, i) => `run ${i + 1} ms`), "note (last run)"],
      fork[0].stages.map(({ name }) => [
        name,
        ...fork.map((r) => fmt(durationMs(r.stages.find((s) => s.name === name)?.elapsed), 0)),
        fork.at(-1).stages.find((s) => s.name === name)?.message ?? "",
      ]),
    );
    console.log(`\nthe snapshot (once, of the running source): ${fmt(snapshotMs, 0)} ms`);
    printTable(
      ["snapshot stage", "ms"],
      snapshot.stages.map((s) => [s.name, fmt(durationMs(s.elapsed), 0)]),
    );
    report({
      measure: "fork → exec-able vs cold create → exec-able (TCG, tiny, same run)",
      baseline: `cold create: ${fmt(coldMs, 0)} ms`,
      now: `fork: ${fmt(forkMs, 0)} ms`,
      ratio: forkMs / coldMs,
      goal: GOAL,
    });
  });
}
