/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha), built from the
 * generated file descriptors so clients such as grpcurl get the real file
 * names and dependencies with no .proto files at hand.
 */
import {
  create,
  fromBinary,
  toBinary,
  type DescEnum,
  type DescFile,
  type DescMessage,
  type MessageInitShape,
} from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter } from "@connectrpc/connect";
import { Code } from "@connectrpc/connect";
import {
  ServerReflection as ReflectionV1,
  ServerReflectionRequestSchema as RequestV1,
  ServerReflectionResponseSchema as ResponseV1,
  file_grpc_reflection_v1_reflection,
  type ServerReflectionRequest,
} from "@banger/gen/grpc/reflection/v1/reflection_pb.js";
import {
  ServerReflection as ReflectionV1alpha,
  ServerReflectionRequestSchema as RequestV1alpha,
  ServerReflectionResponseSchema as ResponseV1alpha,
  file_grpc_reflection_v1alpha_reflection,
} from "@banger/gen/grpc/reflection/v1alpha/reflection_pb.js";
import { file_health_v1_health } from "@banger/gen/health/v1/health_pb.js";

type Answer = NonNullable<MessageInitShape<typeof ResponseV1>["messageResponse"]>;

/** What reflection knows: files by name, the file declaring each symbol, the service names. */
interface ReflectionIndex {
  readonly fileByName: Map<string, DescFile>;
  readonly fileBySymbol: Map<string, DescFile>;
  readonly services: string[];
}

function indexFiles(served: readonly DescFile[]): ReflectionIndex {
  const fileByName = new Map<string, DescFile>();
  const fileBySymbol = new Map<string, DescFile>();
  const services = new Set<string>();
  const addMessage = (file: DescFile, message: DescMessage) => {
    fileBySymbol.set(message.typeName, file);
    for (const nested of message.nestedMessages) addMessage(file, nested);
    for (const nested of message.nestedEnums) addEnum(file, nested);
  };
  const addEnum = (file: DescFile, desc: DescEnum) => fileBySymbol.set(desc.typeName, file);
  const addFile = (file: DescFile) => {
    if (fileByName.has(file.proto.name)) return;
    fileByName.set(file.proto.name, file);
    for (const dependency of file.dependencies) addFile(dependency);
    for (const message of file.messages) addMessage(file, message);
    for (const desc of file.enums) addEnum(file, desc);
    for (const service of file.services) {
      fileBySymbol.set(service.typeName, file);
      for (const method of service.methods) fileBySymbol.set(`${service.typeName}.${method.name}`, file);
    }
  };
  const all = [
    ...served,
    file_grpc_reflection_v1_reflection,
    file_grpc_reflection_v1alpha_reflection,
    file_health_v1_health,
  ];
  for (const file of all) {
    addFile(file);
    for (const service of file.services) services.add(service.typeName);
  }
  return { fileByName, fileBySymbol, services: [...services].sort() };
}

/** The file first, then every file it depends on, transitively, each once. */
function withDependencies(file: DescFile): Uint8Array[] {
  const seen = new Set<string>();
  const out: Uint8Array[] = [];
  const visit = (f: DescFile) => {
    if (seen.has(f.proto.name)) return;
    seen.add(f.proto.name);
    out.push(toBinary(FileDescriptorProtoSchema, f.proto));
    for (const dependency of f.dependencies) visit(dependency);
  };
  visit(file);
  return out;
}

function errorAnswer(code: Code, message: string): Answer {
  return { case: "errorResponse", value: { errorCode: code, errorMessage: message } };
}

function answer(index: ReflectionIndex, request: ServerReflectionRequest): Answer {
  const files = (file: DescFile | undefined, what: string): Answer =>
    file
      ? { case: "fileDescriptorResponse", value: { fileDescriptorProto: withDependencies(file) } }
      : errorAnswer(Code.NotFound, `${what} not found`);
  const req = request.messageRequest;
  switch (req.case) {
    case "listServices":
      return {
        case: "listServicesResponse",
        value: { service: index.services.map((name) => ({ name })) },
      };
    case "fileByFilename":
      return files(index.fileByName.get(req.value), `file ${req.value}`);
    case "fileContainingSymbol":
      return files(index.fileBySymbol.get(req.value), `symbol ${req.value}`);
    case "fileContainingExtension":
      return errorAnswer(
        Code.NotFound,
        `extension ${req.value.extensionNumber} of ${req.value.containingType} not found`,
      );
    case "allExtensionNumbersOfType":
      return errorAnswer(Code.NotFound, `type ${req.value} has no extensions here`);
    default:
      return errorAnswer(Code.InvalidArgument, "the request names no message_request");
  }
}

/**
 * Registers both reflection versions on `router`, answering for `served` (the
 * generated files of the services the server implements), the reflection
 * services themselves and health checking.
 */
export function registerReflection(router: ConnectRouter, served: readonly DescFile[]): void {
  const index = indexFiles(served);
  const respond = (request: ServerReflectionRequest) =>
    create(ResponseV1, {
      validHost: request.host,
      originalRequest: request,
      messageResponse: answer(index, request),
    });

  router.service(ReflectionV1, {
    async *serverReflectionInfo(requests) {
      for await (const request of requests) yield respond(request);
    },
  });
  // v1alpha has the same field numbers: translate through the wire format.
  router.service(ReflectionV1alpha, {
    async *serverReflectionInfo(requests) {
      for await (const request of requests) {
        const response = respond(fromBinary(RequestV1, toBinary(RequestV1alpha, request)));
        yield fromBinary(ResponseV1alpha, toBinary(ResponseV1, response));
      }
    },
  });
}
