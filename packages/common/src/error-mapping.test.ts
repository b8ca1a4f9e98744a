import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "@banger/gen/google/rpc/error_details_pb.js";
import { describe, expect, it } from "vitest";
import { fromConnectError, opIdOfError, toConnectError } from "./error-mapping.js";
import {
  AlreadyExistsError,
  type BangerError,
  CancelledError,
  DeadlineExceededError,
  FailedPreconditionError,
  HostCommandError,
  InternalError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnavailableError,
  UnimplementedError,
} from "./errors.js";

const OP = "op-0123456789ab";

// Services' own reasons, which common's build does not declare: built as a peer's would be.
const cases: [BangerError, Code][] = [
  [new InvalidArgumentError("bad name"), Code.InvalidArgument],
  [new NotFoundError('vm "box" not found', { receivedReason: "VM_NOT_FOUND" }), Code.NotFound],
  [new AlreadyExistsError("exists"), Code.AlreadyExists],
  [
    new FailedPreconditionError('vm "box" is not running', { receivedReason: "VM_NOT_RUNNING" }),
    Code.FailedPrecondition,
  ],
  [new PermissionDeniedError("not the owner"), Code.PermissionDenied],
  [new ResourceExhaustedError("no free IP"), Code.ResourceExhausted],
  [new UnavailableError("image puller is unavailable"), Code.Unavailable],
  [new DeadlineExceededError("too slow"), Code.DeadlineExceeded],
  [new CancelledError("cancelled"), Code.Canceled],
  [new UnimplementedError("later"), Code.Unimplemented],
  [new InternalError("boom"), Code.Internal],
];

describe("error mapping", () => {
  it.each(cases)("maps %s to its gRPC code with the op id in trailers and ErrorInfo", (error, code) => {
    const sent = toConnectError(error, OP);
    expect(sent.code).toBe(code);
    expect(sent.rawMessage).toBe(error.message);
    expect(sent.metadata.get("banger-op-id")).toBe(OP);
    const [info] = sent.findDetails(ErrorInfoSchema);
    expect(info?.reason).toBe(error.reason);
    expect(info?.metadata["op_id"]).toBe(OP);
  });

  it.each(cases)("maps %s back to the same typed error on the client side", (error) => {
    const received = fromConnectError(toConnectError(error, OP));
    expect(received).toBeInstanceOf(error.constructor);
    expect(received.kind).toBe(error.kind);
    expect(received.reason).toBe(error.reason);
    expect(received.message).toBe(error.message);
  });

  it("reads the op id of a received error", () => {
    expect(opIdOfError(toConnectError(new NotFoundError("x"), OP))).toBe(OP);
    expect(opIdOfError(new ConnectError("plain", Code.Unknown))).toBeUndefined();
  });

  it("does not leak the internals of an unexpected error", () => {
    const sent = toConnectError(new Error("ENOENT: /var/lib/banger/secret/path"), OP);
    expect(sent.code).toBe(Code.Internal);
    expect(sent.rawMessage).not.toContain("secret");
    expect(sent.findDetails(ErrorInfoSchema)[0]?.reason).toBe("INTERNAL");
  });

  it("keeps the code of a ConnectError thrown by a library", () => {
    expect(toConnectError(new ConnectError("deadline", Code.DeadlineExceeded), OP).code).toBe(Code.DeadlineExceeded);
  });

  it("turns a status from a foreign peer with no ErrorInfo into a typed error", () => {
    const received = fromConnectError(new ConnectError("gone", Code.Unavailable));
    expect(received).toBeInstanceOf(UnavailableError);
    expect(received.reason).toBe("UNAVAILABLE");
    expect(fromConnectError(new ConnectError("?", Code.DataLoss))).toBeInstanceOf(InternalError);
  });

  it("keeps a host command's argv, exit code and stderr tail", () => {
    const error = new HostCommandError(["ip", "link", "add", "bgr-x"], 2, "line1\nRTNETLINK answers: File exists\n");
    expect(error.message).toBe("ip link add bgr-x exited 2: line1\nRTNETLINK answers: File exists");
    expect(toConnectError(error, OP).code).toBe(Code.Internal);
    expect(error.reason).toBe("HOST_COMMAND_FAILED");
  });

  it("refuses a reason that is not a stable UPPER_SNAKE code", () => {
    expect(() => new NotFoundError("x", { receivedReason: "vm not found" })).toThrow(/UPPER_SNAKE/);
  });
});
