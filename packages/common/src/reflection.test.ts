import {
  create,
  createFileRegistry,
  fromBinary,
  toBinary,
  type DescFile,
  type MessageInitShape,
} from "@bufbuild/protobuf";
import {
  FieldDescriptorProto_Label as Label,
  FieldDescriptorProto_Type as Type,
  FileDescriptorProtoSchema,
  type FileDescriptorProto,
} from "@bufbuild/protobuf/wkt";
import { createClient, createRouterTransport } from "@connectrpc/connect";
import { createAsyncIterable } from "@connectrpc/connect/protocol";
import { file_banger_v1_system } from "@banger/gen/banger/v1/system_pb.js";
import { file_google_rpc_error_details } from "@banger/gen/google/rpc/error_details_pb.js";
import {
  ServerReflection,
  ServerReflectionResponseSchema,
  type ServerReflectionRequestSchema,
  type ServerReflectionResponse,
} from "@banger/gen/grpc/reflection/v1/reflection_pb.js";
import {
  ServerReflection as ServerReflectionV1alpha,
  ServerReflectionResponseSchema as ServerReflectionResponseSchemaV1alpha,
} from "@banger/gen/grpc/reflection/v1alpha/reflection_pb.js";
import { describe, expect, it } from "vitest";
import { registerReflection } from "./reflection.js";

type Request = MessageInitShape<typeof ServerReflectionRequestSchema>;

/** A proto2 file with an extension, which none of the generated files has. */
function extensionsFile(): DescFile {
  const proto = create(FileDescriptorProtoSchema, {
    name: "test/extensions.proto",
    package: "test.ext",
    syntax: "proto2",
    dependency: ["google/rpc/error_details.proto"],
    messageType: [
      {
        name: "Extendable",
        field: [
          { name: "info", number: 1, label: Label.OPTIONAL, type: Type.MESSAGE, typeName: ".google.rpc.ErrorInfo" },
        ],
        extensionRange: [{ start: 100, end: 200 }],
      },
    ],
    extension: [
      { name: "note", number: 150, label: Label.OPTIONAL, type: Type.STRING, extendee: ".test.ext.Extendable" },
      { name: "tag", number: 120, label: Label.OPTIONAL, type: Type.INT32, extendee: ".test.ext.Extendable" },
    ],
  });
  const registry = createFileRegistry(proto, (name) =>
    name === file_google_rpc_error_details.proto.name ? file_google_rpc_error_details : undefined,
  );
  const file = registry.getFile(proto.name);
  if (!file) throw new Error("test file not built");
  return file;
}

const served: DescFile[] = [file_banger_v1_system, file_google_rpc_error_details, extensionsFile()];
const transport = createRouterTransport((router) => registerReflection(router, served));
const v1 = createClient(ServerReflection, transport);
const v1alpha = createClient(ServerReflectionV1alpha, transport);

/** Sends `requests` on one stream and collects the answers. */
async function askAll(...requests: Request[]): Promise<ServerReflectionResponse[]> {
  const responses: ServerReflectionResponse[] = [];
  for await (const response of v1.serverReflectionInfo(createAsyncIterable(requests))) responses.push(response);
  return responses;
}

async function ask(request: Request): Promise<ServerReflectionResponse> {
  const [response] = await askAll(request);
  if (!response) throw new Error("no response");
  return response;
}

function descriptors(response: ServerReflectionResponse): FileDescriptorProto[] {
  if (response.messageResponse.case !== "fileDescriptorResponse")
    throw new Error(
      `expected files, got ${response.messageResponse.case}: ${JSON.stringify(response.messageResponse)}`,
    );
  return response.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b));
}

const symbol = (value: string): Request => ({ messageRequest: { case: "fileContainingSymbol", value } });

describe("server reflection", () => {
  it("lists the served services, reflection and health, sorted, echoing host and request", async () => {
    const response = await ask({ host: "localhost", messageRequest: { case: "listServices", value: "*" } });
    expect(response.validHost).toBe("localhost");
    expect(response.originalRequest?.messageRequest).toEqual({ case: "listServices", value: "*" });
    if (response.messageResponse.case !== "listServicesResponse") throw new Error(response.messageResponse.case);
    const names = response.messageResponse.value.service.map((s) => s.name);
    expect(names).toEqual([
      "banger.v1.SystemService",
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
    ]);
  });

  it.each([
    ["a service", "banger.v1.SystemService", "banger/v1/system.proto"],
    ["a method", "banger.v1.SystemService.GetStatus", "banger/v1/system.proto"],
    ["a message", "banger.v1.ServiceStatus", "banger/v1/system.proto"],
    ["an enum", "banger.v1.CheckStatus", "banger/v1/system.proto"],
    ["a nested message", "google.rpc.BadRequest.FieldViolation", "google/rpc/error_details.proto"],
    ["a field", "google.rpc.ErrorInfo.reason", "google/rpc/error_details.proto"],
    ["a nested enum", "grpc.health.v1.HealthCheckResponse.ServingStatus", "health/v1/health.proto"],
    ["an enum value (scoped beside its enum)", "grpc.health.v1.HealthCheckResponse.SERVING", "health/v1/health.proto"],
    ["an extension", "test.ext.note", "test/extensions.proto"],
    ["a well-known type depended on", "google.protobuf.Duration", "google/protobuf/duration.proto"],
    ["the reflection service itself", "grpc.reflection.v1.ServerReflection", "grpc/reflection/v1/reflection.proto"],
  ])("finds the file declaring %s", async (_, name, file) => {
    expect(descriptors(await ask(symbol(name)))[0]?.name).toBe(file);
  });

  it("returns the file first, then its transitive dependencies, each once", async () => {
    const files = descriptors(await ask(symbol("test.ext.Extendable")));
    expect(files.map((f) => f.name)).toEqual([
      "test/extensions.proto",
      "google/rpc/error_details.proto",
      "google/protobuf/duration.proto",
    ]);
    const [first] = descriptors(
      await ask({ messageRequest: { case: "fileByFilename", value: "banger/v1/system.proto" } }),
    );
    expect(first?.package).toBe("banger.v1");
    expect(first?.service.map((s) => s.name)).toEqual(["SystemService"]);
  });

  it.each([
    "banger.v1.SystemService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "google.rpc.RetryInfo",
    "test.ext.Extendable",
  ])("answers enough to rebuild %s with no .proto at hand", async (name) => {
    const [file, ...dependencies] = descriptors(await ask(symbol(name)));
    if (!file) throw new Error("no file");
    // Throws if a dependency is missing.
    const registry = createFileRegistry(file, (fileName) => dependencies.find((d) => d.name === fileName));
    expect(registry.get(name)?.typeName).toBe(name);
  });

  it("answers the extensions of a type, and the file declaring one", async () => {
    const numbers = await ask({ messageRequest: { case: "allExtensionNumbersOfType", value: "test.ext.Extendable" } });
    expect(numbers.messageResponse).toMatchObject({
      case: "allExtensionNumbersResponse",
      value: { baseTypeName: "test.ext.Extendable", extensionNumber: [120, 150] },
    });
    const none = await ask({ messageRequest: { case: "allExtensionNumbersOfType", value: "google.rpc.ErrorInfo" } });
    expect(none.messageResponse).toMatchObject({ case: "allExtensionNumbersResponse", value: { extensionNumber: [] } });
    const file = await ask({
      messageRequest: {
        case: "fileContainingExtension",
        value: { containingType: "test.ext.Extendable", extensionNumber: 150 },
      },
    });
    expect(descriptors(file)[0]?.name).toBe("test/extensions.proto");
  });

  it("answers NOT_FOUND naming what it does not know, INVALID_ARGUMENT for an empty request", async () => {
    const notFound = async (request: Request, named: string) => {
      const response = await ask(request);
      expect(response.messageResponse).toMatchObject({ case: "errorResponse", value: { errorCode: 5 } });
      expect(response.messageResponse.value).toHaveProperty("errorMessage", expect.stringContaining(named));
      expect(response.originalRequest?.messageRequest.case).toBe(request.messageRequest?.case);
    };
    await notFound(symbol("no.such.Thing"), "no.such.Thing");
    await notFound({ messageRequest: { case: "fileByFilename", value: "nope.proto" } }, "nope.proto");
    await notFound(
      {
        messageRequest: {
          case: "fileContainingExtension",
          value: { containingType: "test.ext.Extendable", extensionNumber: 101 },
        },
      },
      "101",
    );
    await notFound({ messageRequest: { case: "allExtensionNumbersOfType", value: "no.such.Type" } }, "no.such.Type");
    const empty = await ask({});
    expect(empty.messageResponse).toMatchObject({ case: "errorResponse", value: { errorCode: 3 } });
  });

  it("answers several requests on one stream, in order", async () => {
    const responses = await askAll(symbol("no.such.Thing"), symbol("banger.v1.SystemService"), {});
    expect(responses.map((r) => r.messageResponse.case)).toEqual([
      "errorResponse",
      "fileDescriptorResponse",
      "errorResponse",
    ]);
  });

  it("answers v1alpha exactly as v1", async () => {
    // Plain literals: they fit the request types of both versions.
    const requests = [
      { host: "h", messageRequest: { case: "listServices" as const, value: "" } },
      { messageRequest: { case: "fileContainingSymbol" as const, value: "banger.v1.SystemService" } },
      { messageRequest: { case: "fileContainingSymbol" as const, value: "no.such.Thing" } },
      { messageRequest: { case: "allExtensionNumbersOfType" as const, value: "test.ext.Extendable" } },
    ];
    const alpha: Uint8Array[] = [];
    for await (const response of v1alpha.serverReflectionInfo(createAsyncIterable(requests)))
      alpha.push(toBinary(ServerReflectionResponseSchemaV1alpha, response));
    const current = (await askAll(...requests)).map((r) => toBinary(ServerReflectionResponseSchema, r));
    expect(alpha).toEqual(current);
  });
});
