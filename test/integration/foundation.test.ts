/**
 * The foundation end to end: three real services as separate processes on
 * real Unix sockets, the real CLI, and an independent gRPC implementation.
 */
import { spawnSync } from "node:child_process";
import { existsSync, lstatSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { createUnixTransport } from "@banger/common";
import { ErrorInfoSchema } from "@banger/gen/google/rpc/error_details_pb.js";
import { ImageService, file_banger_v1_image } from "@banger/gen/banger/v1/image_pb.js";
import { ExecService, file_banger_v1_exec } from "@banger/gen/banger/v1/exec_pb.js";
import { KernelService, file_banger_v1_kernel } from "@banger/gen/banger/v1/kernel_pb.js";
import { OperationService, file_banger_v1_operation } from "@banger/gen/banger/v1/operation_pb.js";
import { file_banger_v1_system } from "@banger/gen/banger/v1/system_pb.js";
import { VmService, file_banger_v1_vm } from "@banger/gen/banger/v1/vm_pb.js";
import { WorkspaceService, file_banger_v1_workspace } from "@banger/gen/banger/v1/workspace_pb.js";
import { DiskService, file_banger_privileged_v1_disk } from "@banger/gen/banger/privileged/v1/disk_pb.js";
import { file_banger_privileged_v1_host } from "@banger/gen/banger/privileged/v1/host_pb.js";
import { NetworkService, file_banger_privileged_v1_network } from "@banger/gen/banger/privileged/v1/network_pb.js";
import { VmmService, file_banger_privileged_v1_vmm } from "@banger/gen/banger/privileged/v1/vmm_pb.js";
import { PullerService, file_banger_imagepuller_v1_puller } from "@banger/gen/banger/imagepuller/v1/puller_pb.js";
import type { DescFile } from "@bufbuild/protobuf";
import { createAsyncIterable } from "@connectrpc/connect/protocol";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { requireTools } from "@banger/common/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ROOT,
  socketAnswers,
  spawnService,
  startCluster,
  waitUntil,
  type Cluster,
  type ServiceName,
} from "./harness.js";

const ORCHESTRATOR_FILES = [
  file_banger_v1_system,
  file_banger_v1_vm,
  file_banger_v1_operation,
  file_banger_v1_image,
  file_banger_v1_kernel,
  file_banger_v1_workspace,
  file_banger_v1_exec,
];
const PRIVILEGED_FILES = [
  file_banger_privileged_v1_host,
  file_banger_privileged_v1_network,
  file_banger_privileged_v1_disk,
  file_banger_privileged_v1_vmm,
];

interface StatusJson {
  opId: string;
  services: {
    name: string;
    reachable: boolean;
    socket: string;
    version: string;
    errorCode: string;
    errorMessage: string;
  }[];
}

let cluster: Cluster;
beforeAll(async () => {
  cluster = await startCluster();
});
afterAll(async () => {
  await cluster.shutdown();
});

async function connectCall<T>(fn: () => Promise<T>): Promise<ConnectError> {
  try {
    await fn();
  } catch (error) {
    if (error instanceof ConnectError) return error;
    throw error;
  }
  throw new Error("the call succeeded");
}

describe("three services on Unix sockets", () => {
  it("creates every socket 0600", () => {
    for (const name of ["orchestrator", "privileged", "image-puller"] as const) {
      expect(lstatSync(cluster.socket(name)).mode & 0o777).toBe(0o600);
    }
  });

  it("`banger daemon status --json` reports all three reachable, with one op id in all three logs", async () => {
    const result = await cluster.cli(["daemon", "status", "--json"]);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    const status = JSON.parse(result.stdout) as StatusJson;
    expect(status.opId).toMatch(/^op-[0-9a-f]{12}$/);
    expect(status.services.map((s) => [s.name, s.reachable, s.version])).toEqual([
      ["orchestrator", true, "0.1.0"],
      ["privileged", true, "0.1.0"],
      ["image-puller", true, "0.1.0"],
    ]);
    expect(status.services.map((s) => s.socket)).toEqual([
      cluster.socket("orchestrator"),
      cluster.socket("privileged"),
      cluster.socket("image-puller"),
    ]);

    const lines = cluster.linesWithOpId(status.opId);
    const completions = lines.map((l) => [l["service"], l["msg"], l["rpc"], l["code"]]);
    expect(completions).toEqual(
      expect.arrayContaining([
        ["orchestrator", "rpc completed", "banger.v1.SystemService/GetStatus", "ok"],
        ["privileged", "helper rpc completed", "banger.privileged.v1.HostService/GetVersion", "ok"],
        ["image-puller", "rpc completed", "banger.imagepuller.v1.PullerService/GetVersion", "ok"],
      ]),
    );
    // Exactly one completion line per RPC.
    expect(lines.filter((l) => String(l["msg"]).endsWith("completed"))).toHaveLength(3);
    for (const line of lines)
      expect(typeof line["duration_ms"] === "number" || line["msg"] !== "rpc completed").toBe(true);
  });

  it("passes the caller's deadline on to the helper and the puller", async () => {
    const transport = createUnixTransport(cluster.socket("orchestrator"), { peer: "orchestrator" });
    const { SystemService } = await import("@banger/gen/banger/v1/system_pb.js");
    let opId = "";
    await createClient(SystemService, transport.transport).getStatus(
      {},
      { timeoutMs: 7000, onHeader: (h) => (opId = h.get("banger-op-id") ?? "") },
    );
    transport.close();
    const downstream = cluster.linesWithOpId(opId).filter((l) => l["service"] !== "orchestrator");
    expect(downstream).toHaveLength(2);
    for (const line of downstream) {
      // grpc-timeout is the remaining time, e.g. "6998m": less than what the CLI gave.
      const match = /^(\d+)m$/.exec(String(line["grpc_timeout"]));
      expect(match).not.toBeNull();
      expect(Number(match?.[1])).toBeLessThanOrEqual(7000);
    }
  });

  it("answers every RPC not built yet with UNIMPLEMENTED naming it, with an op id", async () => {
    const implemented = new Set([
      ...["GetStatus", "Doctor", "Prune", "GetCapacity"].map((m) => `banger.v1.SystemService/${m}`),
      ...ImageService.methods.map((m) => `${ImageService.typeName}/${m.name}`),
      "banger.privileged.v1.HostService/GetVersion",
      "banger.privileged.v1.HostService/GetInventory",
      ...[NetworkService, DiskService, VmmService, OperationService].flatMap((svc) =>
        svc.methods.map((m) => `${svc.typeName}/${m.name}`),
      ),
      ...KernelService.methods.map((m) => `${KernelService.typeName}/${m.name}`),
      ...PullerService.methods.map((m) => `${PullerService.typeName}/${m.name}`),
      ...VmService.methods.map((m) => `${VmService.typeName}/${m.name}`),
      "banger.v1.ExecService/Exec",
      "banger.v1.ExecService/ExecInteractive",
      ...WorkspaceService.methods.map((m) => `${WorkspaceService.typeName}/${m.name}`),
    ]);
    const sockets: [ServiceName, DescFile[]][] = [
      ["orchestrator", ORCHESTRATOR_FILES],
      ["privileged", PRIVILEGED_FILES],
      ["image-puller", [file_banger_imagepuller_v1_puller]],
    ];
    let checked = 0;
    let visited = 0;
    for (const [name, files] of sockets) {
      const transport = createUnixTransport(cluster.socket(name), { peer: name });
      for (const service of files.flatMap((f) => f.services)) {
        const client = createClient(service, transport.transport) as Record<string, (req: unknown) => unknown>;
        for (const method of service.methods) {
          const rpc = `${service.typeName}/${method.name}`;
          visited++;
          if (implemented.has(rpc)) continue;
          const call = client[method.localName];
          if (!call) throw new Error(`no client method for ${rpc}`);
          const error = await connectCall(async () => {
            const input =
              method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming"
                ? createAsyncIterable([])
                : {};
            const result = call(input);
            if (method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming") {
              for await (const _ of result as AsyncIterable<unknown>) void _;
            } else {
              await result;
            }
          });
          expect(error.code, rpc).toBe(Code.Unimplemented);
          expect(error.rawMessage).toBe(`${rpc} is not implemented yet`);
          expect(error.findDetails(ErrorInfoSchema)[0]?.metadata["op_id"]).toMatch(/^op-[0-9a-f]{12}$/);
          checked++;
        }
      }
      transport.close();
    }
    // The loop ran over every service; every name listed as built is a real RPC, and each of the
    // others (none once all are built) answered UNIMPLEMENTED.
    expect(visited).toBeGreaterThan(0);
    expect(checked).toBe(visited - implemented.size);
  });
});

describe("operations on the orchestrator", () => {
  it("ExecInteractive wants the command first: INVALID_ARGUMENT (COMMAND_FIRST), with an op id", async () => {
    const transport = createUnixTransport(cluster.socket("orchestrator"), { peer: "orchestrator" });
    const exec = createClient(ExecService, transport.transport);
    const error = await connectCall(async () => {
      const input = createAsyncIterable([{ event: { case: "stdin" as const, value: new Uint8Array([1]) } }]);
      for await (const _ of exec.execInteractive(input)) void _;
    });
    transport.close();
    expect(error.code).toBe(Code.InvalidArgument);
    const info = error.findDetails(ErrorInfoSchema)[0];
    expect(info?.reason).toBe("COMMAND_FIRST");
    expect(info?.metadata["op_id"]).toMatch(/^op-[0-9a-f]{12}$/);
  });

  it("answers lookups from its SQLite store: NOT_FOUND for an unknown id, INVALID_ARGUMENT for a malformed one", async () => {
    const transport = createUnixTransport(cluster.socket("orchestrator"), { peer: "orchestrator" });
    const ops = createClient(OperationService, transport.transport);
    expect((await ops.listOperations({})).operations).toEqual([]);
    const unknown = await connectCall(() => ops.getOperation({ id: "op-000000000000" }));
    expect([unknown.code, unknown.findDetails(ErrorInfoSchema)[0]?.reason]).toEqual([
      Code.NotFound,
      "OPERATION_NOT_FOUND",
    ]);
    const malformed = await connectCall(() => ops.watchOperation({ id: "../../etc" })[Symbol.asyncIterator]().next());
    expect([malformed.code, malformed.findDetails(ErrorInfoSchema)[0]?.reason]).toEqual([
      Code.InvalidArgument,
      "INVALID_OP_ID",
    ]);
    transport.close();
    expect(existsSync(join(cluster.stateDir, "banger.db"))).toBe(true);
  });
});

describe("an independent gRPC client (@grpc/grpc-js)", () => {
  const loadOptions = { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true };

  /** A grpc-js client of banger.v1.SystemService, built from the .proto file (no generated code). */
  function systemClient(): grpc.Client & Record<string, unknown> {
    const definition = protoLoader.loadSync("banger/v1/system.proto", {
      ...loadOptions,
      includeDirs: [join(ROOT, "proto")],
    });
    const pkg = grpc.loadPackageDefinition(definition) as unknown as {
      banger: { v1: { SystemService: grpc.ServiceClientConstructor } };
    };
    return new pkg.banger.v1.SystemService(`unix:${cluster.socket("orchestrator")}`, grpc.credentials.createInsecure());
  }

  /** The same for banger.v1.VmService. */
  function vmClient(): grpc.Client & Record<string, unknown> {
    const definition = protoLoader.loadSync("banger/v1/vm.proto", {
      ...loadOptions,
      includeDirs: [join(ROOT, "proto")],
    });
    const pkg = grpc.loadPackageDefinition(definition) as unknown as {
      banger: { v1: { VmService: grpc.ServiceClientConstructor } };
    };
    return new pkg.banger.v1.VmService(`unix:${cluster.socket("orchestrator")}`, grpc.credentials.createInsecure());
  }

  it("calls the orchestrator and reads the op id from headers and from error trailers", async () => {
    const client = systemClient();
    const headerOpId = await new Promise<string>((resolve, reject) => {
      const call = client["getStatus"] as (
        req: object,
        cb: (err: grpc.ServiceError | null, res: { services: { name: string }[] }) => void,
      ) => grpc.ClientUnaryCall;
      const c = call.call(client, {}, (err, res) => {
        if (err) reject(err);
        else expect(res.services.map((s) => s.name)).toEqual(["orchestrator", "privileged", "image-puller"]);
      });
      c.on("metadata", (md) => resolve(String(md.get("banger-op-id")[0])));
    });
    expect(headerOpId).toMatch(/^op-[0-9a-f]{12}$/);

    // An error carries it in trailers too; a caller-chosen well-formed id is adopted.
    const metadata = new grpc.Metadata();
    metadata.set("banger-op-id", "op-00000000c0de");
    const vms = vmClient();
    const error = await new Promise<grpc.ServiceError>((resolve) => {
      const getVm = vms["getVm"] as (
        req: object,
        md: grpc.Metadata,
        cb: (err: grpc.ServiceError | null) => void,
      ) => void;
      getVm.call(vms, { name: "nope" }, metadata, (err) => resolve(err as grpc.ServiceError));
    });
    expect(error.code).toBe(grpc.status.NOT_FOUND);
    expect(error.metadata.get("banger-op-id")).toEqual(["op-00000000c0de"]);
    expect(error.metadata.get("grpc-status-details-bin")).toHaveLength(1);
    vms.close();
    client.close();
  });

  it("ignores a malformed inbound op id: a fresh one is used and the bad text is never logged", async () => {
    const client = systemClient();
    const metadata = new grpc.Metadata();
    metadata.set("banger-op-id", "op-EVIL-{injected}");
    const opId = await new Promise<string>((resolve, reject) => {
      const getStatus = client["getStatus"] as (
        req: object,
        md: grpc.Metadata,
        cb: (err: grpc.ServiceError | null) => void,
      ) => grpc.ClientUnaryCall;
      const call = getStatus.call(client, {}, metadata, (err) => err && reject(err));
      call.on("metadata", (md) => resolve(String(md.get("banger-op-id")[0])));
    });
    client.close();
    expect(opId).toMatch(/^op-[0-9a-f]{12}$/);
    expect(cluster.linesWithOpId(opId).length).toBeGreaterThanOrEqual(3);
    const everything = ["orchestrator", "privileged", "image-puller"]
      .flatMap((name) => cluster.service(name as ServiceName).logs)
      .map((l) => JSON.stringify(l));
    expect(everything.some((l) => l.includes("EVIL"))).toBe(false);
  });

  it("lists the services through server reflection (v1 and v1alpha)", async () => {
    for (const version of ["v1", "v1alpha"]) {
      const definition = protoLoader.loadSync(`grpc/reflection/${version}/reflection.proto`, {
        ...loadOptions,
        includeDirs: [join(ROOT, "node_modules/@grpc/reflection/build/proto")],
      });
      const pkg = grpc.loadPackageDefinition(definition) as unknown as {
        grpc: { reflection: Record<string, { ServerReflection: grpc.ServiceClientConstructor }> };
      };
      const Reflection = pkg.grpc.reflection[version]?.ServerReflection;
      if (!Reflection) throw new Error(`no reflection ${version} client`);
      const client = new Reflection(`unix:${cluster.socket("orchestrator")}`, grpc.credentials.createInsecure());
      const names = await new Promise<string[]>((resolve, reject) => {
        const info = client["serverReflectionInfo"] as () => grpc.ClientDuplexStream<
          object,
          { listServicesResponse?: { service: { name: string }[] } }
        >;
        const stream = info.call(client);
        stream.on("data", (res: { listServicesResponse?: { service: { name: string }[] } }) => {
          resolve((res.listServicesResponse?.service ?? []).map((s) => s.name));
          stream.end();
        });
        stream.on("error", reject);
        stream.write({ listServices: "" });
      });
      client.close();
      expect(names).toEqual(
        expect.arrayContaining([
          "banger.v1.SystemService",
          "banger.v1.VmService",
          "banger.v1.ImageService",
          "grpc.health.v1.Health",
          `grpc.reflection.${version}.ServerReflection`,
        ]),
      );
    }
  });
});

const PYTHON = "/usr/bin/python3";
const hasGrpcio =
  requireTools("Debian's python3-grpcio as a client", [
    PYTHON,
    { what: "Python's grpc module (python3-grpcio)", present: spawnSync(PYTHON, ["-c", "import grpc"]).status === 0 },
  ]).length === 0;

describe("Debian's python3-grpcio (C-core) as a client", () => {
  it.skipIf(!hasGrpcio)(
    "calls the orchestrator, reads op ids from headers and error trailers, and uses reflection",
    () => {
      const result = spawnSync(
        PYTHON,
        [join(import.meta.dirname, "interop/grpcio_client.py"), cluster.socket("orchestrator")],
        {
          encoding: "utf8",
        },
      );
      expect(result.stderr).toBe("");
      const out = JSON.parse(result.stdout) as {
        status_names: string[];
        header_op_id: string;
        error: { code: string; details: string; trailer_op_id: string; has_status_details: boolean };
        reflection_lists_system_service: boolean;
      };
      expect(out.status_names).toEqual(["orchestrator", "privileged", "image-puller"]);
      expect(out.header_op_id).toMatch(/^op-[0-9a-f]{12}$/);
      expect(out.error).toEqual({
        code: "NOT_FOUND",
        details: "VM nope does not exist",
        trailer_op_id: expect.stringMatching(/^op-[0-9a-f]{12}$/) as unknown,
        has_status_details: true,
      });
      expect(out.reflection_lists_system_service).toBe(true);
    },
  );
});

describe("when a service is down", () => {
  it("status reports the stopped puller unreachable, and an RPC that needs it fails UNAVAILABLE with an op id", async () => {
    await cluster.stop("image-puller");
    expect(existsSync(cluster.socket("image-puller"))).toBe(false);

    const result = await cluster.cli(["daemon", "status", "--json"]);
    expect(result.code).toBe(1);
    const status = JSON.parse(result.stdout) as StatusJson;
    const puller = status.services.find((s) => s.name === "image-puller");
    expect(puller).toMatchObject({ reachable: false, errorCode: "unavailable" });
    expect(puller?.errorMessage).toContain(cluster.socket("image-puller"));
    expect(status.services.filter((s) => s.reachable).map((s) => s.name)).toEqual(["orchestrator", "privileged"]);

    const transport = createUnixTransport(cluster.socket("orchestrator"), { peer: "orchestrator" });
    const error = await connectCall(() =>
      createClient(ImageService, transport.transport).pullImage({ reference: "debian:bookworm" }),
    );
    transport.close();
    expect(error.code).toBe(Code.Unavailable);
    expect(error.rawMessage).toContain(cluster.socket("image-puller"));
    const opId = error.metadata.get("banger-op-id");
    expect(opId).toMatch(/^op-[0-9a-f]{12}$/);
    expect(error.findDetails(ErrorInfoSchema)[0]?.metadata["op_id"]).toBe(opId);

    const table = await cluster.cli(["daemon", "status"]);
    expect(table.code).toBe(1);
    expect(table.stdout).toMatch(/image-puller\s+UNREACHABLE/);

    await cluster.start("image-puller");
    expect((await cluster.cli(["daemon", "status"])).code).toBe(0);
  });

  it("the CLI reports an orchestrator that is not running as unavailable, naming the socket", async () => {
    const missing = join(cluster.dir, "nowhere.sock");
    const result = await cluster.cli(["daemon", "status"], { BANGER_SOCKET: missing });
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/orchestrator\s+UNREACHABLE/);
    expect(result.stdout).toContain(missing);
  });

  it("refuses to start on a bad config file, naming the file, each bad key and why, and touching nothing", async () => {
    const configFile = join(cluster.dir, "bad-config.toml");
    writeFileSync(configFile, 'vmm = "bochs"\n[vm]\nvcpu = 64\n[network]\nbridg = "bgr1"\n');
    const runtimeDir = join(cluster.dir, "bad-config-run");
    const stateDir = join(cluster.dir, "bad-config-state");
    const bad = spawnService("orchestrator", [
      "--runtime-dir",
      runtimeDir,
      "--state-dir",
      stateDir,
      "--config",
      configFile,
    ]);
    expect(await bad.exited).toBe(1);
    const fatal = String(bad.logs.find((l) => l["level"] === "fatal")?.["msg"]);
    expect(fatal).toContain(`${configFile}: vm.vcpu: must be between 1 and 32, got 64`);
    expect(fatal).toContain(`${configFile}: network.bridg: unknown key (did you mean "bridge"?)`);
    expect(fatal).toMatch(new RegExp(`${configFile}: vmm: .*bochs`));
    expect(existsSync(stateDir)).toBe(false); // no database created
  });

  it("a stale socket left by kill -9 does not stop a restart; a live one is refused", async () => {
    await cluster.kill9("orchestrator");
    expect(lstatSync(cluster.socket("orchestrator")).isSocket()).toBe(true); // left behind
    expect(await socketAnswers(cluster.socket("orchestrator"))).toBe(false);

    await cluster.start("orchestrator");
    expect((await cluster.cli(["daemon", "status"])).code).toBe(0);

    const second = spawnService("orchestrator", ["--runtime-dir", cluster.runtimeDir, "--state-dir", cluster.stateDir]);
    expect(await second.exited).toBe(1);
    const fatal = second.logs.find((l) => l["level"] === "fatal");
    expect(String(fatal?.["msg"])).toContain(
      `another server is already listening on ${cluster.socket("orchestrator")}`,
    );
    expect(await socketAnswers(cluster.socket("orchestrator"))).toBe(true);
    await waitUntil(async () => (await cluster.cli(["daemon", "status"])).code === 0, undefined, "status");
  });
});
