import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Writable } from "node:stream";
import { createLogger } from "@banger/common";
import {
  GetOperationRequestSchema,
  GetOperationResponseSchema,
  OperationSchema,
  OperationService,
  WatchOperationRequestSchema,
  WatchOperationResponseSchema,
} from "@banger/gen/banger/v1/operation_pb.js";
import { create, toJson } from "@bufbuild/protobuf";
import { createHandlerContext } from "@connectrpc/connect";
import Sqlite from "better-sqlite3";
import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { openStore } from "../store/database.js";
import { appliedMigrations } from "../store/migrations.js";
import { getOperation, listOperations } from "../store/operation-repository.js";
import { useTempDir } from "../../test-support/store.js";
import { createOperations } from "../core/operations.js";
import { createOperationService } from "./operation-service.js";
import { operationToProto } from "./to-proto.js";

const fixture = (name: string) => readFileSync(new URL(`./fixtures/${name}`, import.meta.url), "utf8");
/** GetOperation's answer for each operation of the fixture, as the code that made it gave them. */
const expected = JSON.parse(fixture("operations-before-domain-results.expected.json")) as Record<string, unknown>;
const wire = (op: Parameters<typeof operationToProto>[0]) =>
  toJson(OperationSchema, create(OperationSchema, operationToProto(op)));

describe("operation results stored by earlier code (proto JSON)", () => {
  const tempDir = useTempDir();

  /** The fixture database (made before results were domain records), plus `extra` rows, not yet migrated. */
  function oldDatabase(extra: readonly { id: string; result: string }[] = []): string {
    const path = join(tempDir(), "state.db");
    const old = new Sqlite(path);
    old.exec(fixture("operations-before-domain-results.sql"));
    const insert = old.prepare(
      `insert into operations (id, kind, state, target, stages, result, error, created_at, updated_at, ended_at)
       values (?, 'create-vm', 'succeeded', 'odd', '[]', ?, null, '2026-12-01T11:00:00.000Z', '2026-12-01T11:00:00.000Z', '2026-12-01T11:00:00.000Z')`,
    );
    for (const row of extra) insert.run(row.id, row.result);
    old.close();
    return path;
  }

  it("are rewritten as domain records, and GetOperation and WatchOperation give every one as before", async () => {
    const store = await openStore(oldDatabase());
    try {
      expect(await appliedMigrations(store.db)).toContain("2026_12_07_0003_operation_results_as_domain_records");
      const quiet = new Writable({ write: (_chunk, _encoding, done) => done() });
      const service = createOperationService(
        createOperations({ db: store.db, logger: createLogger({ service: "orchestrator", destination: quiet }) }),
      );
      const context = (method: keyof typeof OperationService.method) =>
        createHandlerContext({
          service: OperationService,
          method: OperationService.method[method],
          protocolName: "grpc",
          requestMethod: "POST",
          url: `/banger.v1.OperationService/${method}`,
        });
      const ids = Object.keys(expected);
      expect(ids).toHaveLength(15);
      for (const id of ids) {
        const op = await getOperation(store.db, id);
        expect(op?.result?.kind, id).not.toBe("unreadable");
        const got = await service.getOperation(create(GetOperationRequestSchema, { id }), context("getOperation"));
        expect(toJson(GetOperationResponseSchema, create(GetOperationResponseSchema, got)), id).toEqual({
          operation: expected[id],
        });
        const watched = [];
        const request = create(WatchOperationRequestSchema, { id });
        for await (const event of service.watchOperation(request, context("watchOperation"))) {
          watched.push(toJson(WatchOperationResponseSchema, create(WatchOperationResponseSchema, event)));
        }
        expect(watched, id).toEqual([{ operation: expected[id] }]);
      }
      // Stored as the domain form now: tagged, with domain enum names and plain numbers.
      const { rows } = await sql<{
        result: string;
      }>`select result from operations where id = 'op-a00000000002'`.execute(store.db);
      expect(JSON.parse(rows[0]?.result ?? "")).toMatchObject({
        kind: "vm",
        vm: { state: "running", vmm: "qemu-microvm", rootDiskStrategy: "dm-snapshot", workDiskMib: 8192 },
      });
      const kinds = (await listOperations(store.db, { limit: 100 })).map((op) => op.result?.kind ?? "none");
      expect(new Set(kinds)).toEqual(new Set(["vm", "image", "kernel", "none"]));
    } finally {
      await store.close();
    }
  });

  it("an odd stored result stays as it was: the operation reads without it, and the list still reads", async () => {
    const odd = [
      { id: "op-0dd000000001", result: "not json" },
      { id: "op-0dd000000002", result: '{"something":1}' },
      {
        id: "op-0dd000000003",
        result: '{"vm":{"name":"x","state":"VM_STATE_SLEEPING","createTime":"2026-12-01T09:00:00.000Z"}}',
      },
      {
        id: "op-0dd000000004",
        result: '{"kernel":{"name":"k","kernelBytes":"12x","createTime":"2026-12-01T09:00:00.000Z"}}',
      },
      { id: "op-0dd000000005", result: "[1,2]" },
    ];
    const store = await openStore(oldDatabase(odd));
    try {
      for (const { id, result } of odd) {
        const { rows } = await sql<{ result: string }>`select result from operations where id = ${id}`.execute(
          store.db,
        );
        expect(rows[0]?.result, id).toBe(result);
        const op = await getOperation(store.db, id);
        expect(op?.result?.kind, id).toBe("unreadable");
        expect(op?.result?.kind === "unreadable" && op.result.detail, id).toContain(`result of ${id}`);
        expect(op && wire(op), id).toMatchObject({ id, state: "OPERATION_STATE_SUCCEEDED" });
        expect(op && Object.keys(wire(op) as object), id).not.toContain("vm");
      }
      expect(await listOperations(store.db, { limit: 100 })).toHaveLength(15 + odd.length);
      // The fixture's own operations were migrated all the same.
      expect(wire((await getOperation(store.db, "op-a00000000001"))!)).toEqual(expected["op-a00000000001"]);
    } finally {
      await store.close();
    }
  });
});
