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
  type DescExtension,
  type DescFile,
  type DescMessage,
  type MessageInitShape,
} from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ConnectRouter } from "@connectrpc/connect";
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

/** What reflection knows, computed once at registration. */
interface ReflectionIndex {
  /** Every file served or depended on, by file name ("banger/v1/system.proto"). */
  readonly fileByName: ReadonlyMap<string, DescFile>;
  /** The file declaring each fully qualified name. */
  readonly fileBySymbol: ReadonlyMap<string, DescFile>;
  /** For every message type: its extensions, by field number. */
  readonly extensionsByType: ReadonlyMap<string, ReadonlyMap<number, DescFile>>;
  /** Full names of the services served, sorted. */
  readonly services: readonly string[];
}

/** The files reflection always describes, whatever the caller serves. */
const ALWAYS_SERVED: readonly DescFile[] = [
  file_grpc_reflection_v1_reflection,
  file_grpc_reflection_v1alpha_reflection,
  file_health_v1_health,
];

function indexFiles(served: readonly DescFile[]): ReflectionIndex {
  const fileByName = new Map<string, DescFile>();
  const fileBySymbol = new Map<string, DescFile>();
  const extensionsByType = new Map<string, Map<number, DescFile>>();
  const extensionsOf = (typeName: string): Map<number, DescFile> => {
    let numbers = extensionsByType.get(typeName);
    if (!numbers) extensionsByType.set(typeName, (numbers = new Map<number, DescFile>()));
    return numbers;
  };

  const addExtension = (file: DescFile, extension: DescExtension) => {
    fileBySymbol.set(extension.typeName, file);
    extensionsOf(extension.extendee.typeName).set(extension.number, file);
  };
  // Enum values are scoped like their enum's siblings (pkg.VALUE, not pkg.Enum.VALUE).
  const addEnum = (file: DescFile, desc: DescEnum) => {
    fileBySymbol.set(desc.typeName, file);
    const scope = desc.parent?.typeName ?? file.proto.package;
    for (const value of desc.values) fileBySymbol.set(scope ? `${scope}.${value.name}` : value.name, file);
  };
  const addMessage = (file: DescFile, message: DescMessage) => {
    fileBySymbol.set(message.typeName, file);
    extensionsOf(message.typeName);
    for (const field of message.fields) fileBySymbol.set(`${message.typeName}.${field.name}`, file);
    for (const oneof of message.oneofs) fileBySymbol.set(`${message.typeName}.${oneof.name}`, file);
    for (const nested of message.nestedMessages) addMessage(file, nested);
    for (const nested of message.nestedEnums) addEnum(file, nested);
    for (const nested of message.nestedExtensions) addExtension(file, nested);
  };
  // Every named declaration is a symbol, as in grpc-go: services, methods,
  // messages, fields, oneofs, enums, enum values and extensions.
  const addFile = (file: DescFile) => {
    if (fileByName.has(file.proto.name)) return;
    fileByName.set(file.proto.name, file);
    for (const dependency of file.dependencies) addFile(dependency);
    for (const message of file.messages) addMessage(file, message);
    for (const desc of file.enums) addEnum(file, desc);
    for (const extension of file.extensions) addExtension(file, extension);
    for (const service of file.services) {
      fileBySymbol.set(service.typeName, file);
      for (const method of service.methods) fileBySymbol.set(`${service.typeName}.${method.name}`, file);
    }
  };

  // Only the given files' services are served; their dependencies' are not.
  const services = new Set<string>();
  for (const file of [...served, ...ALWAYS_SERVED]) {
    addFile(file);
    for (const service of file.services) services.add(service.typeName);
  }
  return { fileByName, fileBySymbol, extensionsByType, services: [...services].sort() };
}

/**
 * The file first, then every file it depends on, transitively, each once.
 * Sent whole every time (as grpc-java does), so each answer stands alone.
 */
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
  // Connect's Code numbers are gRPC's status codes (NotFound = 5).
  return { case: "errorResponse", value: { errorCode: code, errorMessage: message } };
}

function filesAnswer(file: DescFile | undefined, notFound: string): Answer {
  return file
    ? { case: "fileDescriptorResponse", value: { fileDescriptorProto: withDependencies(file) } }
    : errorAnswer(Code.NotFound, notFound);
}

function answer(index: ReflectionIndex, request: ServerReflectionRequest): Answer {
  const req = request.messageRequest;
  switch (req.case) {
    case "listServices":
      return { case: "listServicesResponse", value: { service: index.services.map((name) => ({ name })) } };
    case "fileByFilename":
      return filesAnswer(index.fileByName.get(req.value), `file not found: ${req.value}`);
    case "fileContainingSymbol":
      return filesAnswer(index.fileBySymbol.get(req.value), `symbol not found: ${req.value}`);
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = req.value;
      return filesAnswer(
        index.extensionsByType.get(containingType)?.get(extensionNumber),
        `extension not found: ${extensionNumber} of ${containingType}`,
      );
    }
    case "allExtensionNumbersOfType": {
      const numbers = index.extensionsByType.get(req.value);
      if (!numbers) return errorAnswer(Code.NotFound, `type not found: ${req.value}`);
      return {
        case: "allExtensionNumbersResponse",
        value: { baseTypeName: req.value, extensionNumber: [...numbers.keys()].sort((a, b) => a - b) },
      };
    }
    case undefined:
      return errorAnswer(Code.InvalidArgument, "the request sets no message_request");
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
  // v1alpha has the same messages, field for field: translate through the wire format.
  router.service(ReflectionV1alpha, {
    async *serverReflectionInfo(requests) {
      for await (const request of requests) {
        const response = respond(fromBinary(RequestV1, toBinary(RequestV1alpha, request)));
        yield fromBinary(ResponseV1alpha, toBinary(ResponseV1, response));
      }
    },
  });
}
