import { fromBinary, type DescFile } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { createClient, createRouterTransport } from "@connectrpc/connect";
import { createAsyncIterable } from "@connectrpc/connect/protocol";
import { file_google_rpc_error_details } from "@banger/gen/google/rpc/error_details_pb.js";
import { ServerReflection, type ServerReflectionResponse } from "@banger/gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "@banger/gen/grpc/reflection/v1alpha/reflection_pb.js";
import { file_banger_v1_system } from "@banger/gen/banger/v1/system_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ServerReflectionRequestSchema } from "@banger/gen/grpc/reflection/v1/reflection_pb.js";
import { describe, expect, it } from "vitest";
import { registerReflection } from "./reflection.js";

const served: DescFile[] = [file_banger_v1_system, file_google_rpc_error_details];
const transport = createRouterTransport((router) => registerReflection(router, served));

async function ask(request: MessageInitShape<typeof ServerReflectionRequestSchema>): Promise<ServerReflectionResponse> {
  const client = createClient(ServerReflection, transport);
  for await (const response of client.serverReflectionInfo(createAsyncIterable([request]))) return response;
  throw new Error("no response");
}

function fileNames(response: ServerReflectionResponse): string[] {
  if (response.messageResponse.case !== "fileDescriptorResponse")
    throw new Error(`got ${response.messageResponse.case}`);
  return response.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name);
}

describe("server reflection", () => {
  it("lists the served services, reflection and health, sorted", async () => {
    const response = await ask({ host: "localhost", messageRequest: { case: "listServices", value: "" } });
    expect(response.validHost).toBe("localhost");
    expect(response.originalRequest?.messageRequest.case).toBe("listServices");
    expect(response.messageResponse.case).toBe("listServicesResponse");
    const names =
      response.messageResponse.case === "listServicesResponse"
        ? response.messageResponse.value.service.map((s) => s.name)
        : [];
    expect(names).toEqual([...names].sort());
    expect(names).toEqual(
      expect.arrayContaining([
        "banger.v1.SystemService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
      ]),
    );
  });

  it.each([
    ["a service", "banger.v1.SystemService"],
    ["a method", "banger.v1.SystemService.GetStatus"],
    ["a message", "banger.v1.ServiceStatus"],
  ])("finds the file declaring %s, with its real name", async (_, symbol) => {
    const response = await ask({ messageRequest: { case: "fileContainingSymbol", value: symbol } });
    expect(fileNames(response)[0]).toBe("banger/v1/system.proto");
  });

  it("returns a file's transitive dependencies after it", async () => {
    const response = await ask({ messageRequest: { case: "fileByFilename", value: "google/rpc/error_details.proto" } });
    const names = fileNames(response);
    expect(names[0]).toBe("google/rpc/error_details.proto");
    expect(names).toContain("google/protobuf/duration.proto");
    expect(new Set(names).size).toBe(names.length);
  });

  it("answers NOT_FOUND for an unknown symbol or file, INVALID_ARGUMENT for an empty request", async () => {
    const unknown = await ask({ messageRequest: { case: "fileContainingSymbol", value: "no.such.Thing" } });
    expect(unknown.messageResponse).toMatchObject({ case: "errorResponse", value: { errorCode: 5 } });
    const file = await ask({ messageRequest: { case: "fileByFilename", value: "nope.proto" } });
    expect(file.messageResponse).toMatchObject({ case: "errorResponse", value: { errorCode: 5 } });
    const empty = await ask({});
    expect(empty.messageResponse).toMatchObject({ case: "errorResponse", value: { errorCode: 3 } });
  });

  it("answers v1alpha the same way", async () => {
    const client = createClient(ServerReflectionV1alpha, transport);
    const request = { messageRequest: { case: "fileContainingSymbol" as const, value: "banger.v1.SystemService" } };
    for await (const response of client.serverReflectionInfo(createAsyncIterable([request]))) {
      expect(response.messageResponse.case).toBe("fileDescriptorResponse");
      if (response.messageResponse.case === "fileDescriptorResponse") {
        const first = response.messageResponse.value.fileDescriptorProto[0];
        expect(first && fromBinary(FileDescriptorProtoSchema, first).name).toBe("banger/v1/system.proto");
      }
    }
  });
});
